/**
 * The only module that knows winston. Under systemd (JOURNAL_STREAM names our stderr) every
 * line carries the syslog priority prefix `<3>`…`<7>` so journald files it at the right level;
 * elsewhere, plain readable lines on stderr. stdout stays reserved for the report (--json).
 */
import * as fs from 'node:fs'
import winston from 'winston'
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
  const journal = options.journal ?? stderrIsJournal()
  const line = journal
    ? winston.format.printf((info) => `<${PRIORITY[info.level] ?? 6}>${String(info.message)}`)
    : winston.format.printf((info) => `build-cleaner: ${info.level === 'info' ? '' : `${info.level}: `}${String(info.message)}`)
  const transport = options.stream
    ? new winston.transports.Stream({ stream: options.stream })
    : new winston.transports.Console({ stderrLevels: Object.keys(PRIORITY) })
  const w = winston.createLogger({
    levels: winston.config.syslog.levels,
    level: verbosity === 'quiet' ? 'warning' : verbosity === 'verbose' ? 'debug' : 'info',
    format: line,
    transports: [transport],
  })
  return {
    error: (m) => void w.log('error', m),
    warn: (m) => void w.log('warning', m),
    notice: (m) => void w.log('notice', m),
    info: (m) => void w.log('info', m),
    debug: (m) => void w.log('debug', m),
  }
}
