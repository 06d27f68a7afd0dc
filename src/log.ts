/**
 * The only module that knows winston. Under systemd (JOURNAL_STREAM names our stderr) every
 * line carries the syslog priority prefix `<3>`…`<7>` so journald files it at the right level;
 * elsewhere, plain readable lines on stderr. stdout stays reserved for the report (--json).
 *
 * winston is loaded with the first line that passes the level (it costs ~80 ms to load, and a
 * quiet purge, the one run when the disk is full, usually writes none).
 */
import * as fs from 'node:fs'
import { createRequire } from 'node:module'
import type Winston from 'winston'
import type { Logger } from './logger.js'

export type Verbosity = 'quiet' | 'normal' | 'verbose'

const PRIORITY: Record<string, number> = { error: 3, warning: 4, notice: 5, info: 6, debug: 7 }

/** True when stderr is the journal stream systemd told us about (not merely inherited). */
export function stderrIsJournal(env: NodeJS.ProcessEnv = process.env): boolean {
  const stream = env['JOURNAL_STREAM']
  if (!stream) return false
  try {
    const st = fs.fstatSync(2)
    return stream === `${st.dev}:${st.ino}`
  } catch {
    return false
  }
}

export function createLogger(verbosity: Verbosity, options: { journal?: boolean; stream?: NodeJS.WritableStream } = {}): Logger {
  const threshold = PRIORITY[verbosity === 'quiet' ? 'warning' : verbosity === 'verbose' ? 'debug' : 'info']!
  let w: Winston.Logger | undefined
  const open = (): Winston.Logger => {
    const winston = createRequire(import.meta.url)('winston') as typeof Winston
    const journal = options.journal ?? stderrIsJournal()
    const line = journal
      ? winston.format.printf((info) => `<${PRIORITY[info.level] ?? 6}>${String(info.message)}`)
      : winston.format.printf((info) => `build-cleaner: ${info.level === 'info' ? '' : `${info.level}: `}${String(info.message)}`)
    const transport = options.stream
      ? new winston.transports.Stream({ stream: options.stream })
      : new winston.transports.Console({ stderrLevels: Object.keys(PRIORITY) })
    return winston.createLogger({ levels: winston.config.syslog.levels, level: 'debug', format: line, transports: [transport] })
  }
  const at = (level: string) => (message: string) => {
    if (PRIORITY[level]! > threshold) return
    w ??= open()
    w.log(level, message)
  }
  return { error: at('error'), warn: at('warning'), notice: at('notice'), info: at('info'), debug: at('debug') }
}
