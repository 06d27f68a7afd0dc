/**
 * Live progress of an interactive purge on a TTY: one line, rewritten in place at most ten
 * times a second — entries removed so far in the chroot being deleted. Nothing of it when
 * stderr is not a TTY (systemd, pipes, files). Log lines go to the same terminal: each one
 * must first clear the progress line, or it starts in the middle of it (`clearingFirst`).
 */
import type { Logger } from './logger.js'

export interface Progress {
  update(p: { path: string; entries: number }): void
  clear(): void
}

export function progressReporter(stream: NodeJS.WriteStream): Progress {
  let shown = false
  let last = 0
  return {
    update({ path, entries }) {
      const now = Date.now()
      if (now - last < 100) return
      last = now
      const text = `removing ${path}: ${entries.toLocaleString('en-US')} entries`
      const width = Math.max(20, (stream.columns ?? 80) - 1)
      stream.write(`\r\x1b[2K${text.length > width ? '…' + text.slice(text.length - width + 1) : text}`)
      shown = true
    },
    clear() {
      if (shown) stream.write('\r\x1b[2K')
      shown = false
    },
  }
}

/** `log`, clearing the progress line before every message so that each starts on a clean line. */
export function clearingFirst(log: Logger, progress: Progress | undefined): Logger {
  if (!progress) return log
  const at = (write: (m: string) => void) => (m: string) => {
    progress.clear()
    write(m)
  }
  return {
    error: at((m) => log.error(m)),
    warn: at((m) => log.warn(m)),
    notice: at((m) => log.notice(m)),
    info: at((m) => log.info(m)),
    debug: at((m) => log.debug(m)),
  }
}
