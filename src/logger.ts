/**
 * The small logging interface the core depends on. Only log.ts knows winston;
 * tests pass a recording logger.
 */
export interface Logger {
  error(message: string): void
  warn(message: string): void
  notice(message: string): void
  info(message: string): void
  debug(message: string): void
}

export const silentLogger: Logger = {
  error() {},
  warn() {},
  notice() {},
  info() {},
  debug() {},
}

/** A logger that keeps every line, for tests. */
export function recordingLogger(): Logger & { lines: string[] } {
  const lines: string[] = []
  const at = (level: string) => (message: string) => void lines.push(`${level}: ${message}`)
  return { lines, error: at('error'), warn: at('warn'), notice: at('notice'), info: at('info'), debug: at('debug') }
}
