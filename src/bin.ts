#!/usr/bin/env node
/**
 * Entry point: wires the process (argv, config file, signals, stdout, TTY progress, exit code)
 * to a run. SIGTERM/SIGINT (systemd stop, Ctrl-C) abort through one AbortSignal: the run stops
 * between steps, never inside a mount teardown, and every lock is released on the way out.
 *
 * A purge is run to delete, usually on a full disk: its remove helpers are started before the
 * rest of the program is even loaded, so that they are up when the walk begins.
 */
import { createRequire } from 'node:module'
import { parseCli, HELP } from './cli.js'
import { CleanerError, isInputError } from './errors.js'
import { createLogger } from './log.js'
import { systemIo } from './io.js'
import { DEFAULT_CONFIG, loadConfig } from './config.js'
import { resolveOptions } from './options.js'
import { EXIT_FAILED, EXIT_USAGE } from './exit-codes.js'
import { clearingFirst, progressReporter } from './progress.js'
import { startRemoveHelpers } from './remove-parallel.js'
import type { RunContext } from './session.js'

async function main(argv: readonly string[]): Promise<number> {
  let request
  try {
    request = parseCli(argv)
  } catch (err) {
    if (isInputError(err)) {
      process.stderr.write(`build-cleaner: ${err.message}\n`)
      return EXIT_USAGE
    }
    throw err
  }
  if (request.kind === 'help') {
    process.stdout.write(HELP + '\n')
    return 0
  }
  if (request.kind === 'version') {
    // dist/bin.js ships next to package.json's directory; the test build sits one level deeper.
    const require = createRequire(import.meta.url)
    const pkg = (() => {
      try {
        return require('../package.json')
      } catch {
        return require('../../package.json')
      }
    })() as { version: string }
    process.stdout.write(`build-cleaner ${pkg.version}\n`)
    return 0
  }

  const log = createLogger(request.flags.verbosity)
  let options
  try {
    const config = loadConfig(systemIo, request.flags.config ?? DEFAULT_CONFIG, { explicit: request.flags.config !== undefined, log })
    options = resolveOptions(request.flags, config)
  } catch (err) {
    if (isInputError(err)) {
      log.error(err.message)
      return EXIT_USAGE
    }
    throw err
  }

  const helpers = request.kind === 'purge' && !options.dryRun && options.jobs > 1 ? startRemoveHelpers(options.jobs - 1) : undefined
  const controller = new AbortController()
  const stop = (signal: NodeJS.Signals) => {
    log.warn(`received ${signal}: stopping after the current step`)
    controller.abort()
  }
  // `on`, not `once`: execa's signal-exit hook treats a signal nobody listens to any more as
  // fatal and kills the running child (an `umount` half-way through a teardown) and us.
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
  const progress = process.stderr.isTTY && request.kind === 'purge' && !options.dryRun ? progressReporter(process.stderr) : undefined
  const ctx: RunContext = {
    io: systemIo,
    log: clearingFirst(log, progress),
    stdout: (text) => {
      progress?.clear()
      process.stdout.write(text + '\n')
    },
    signal: controller.signal,
    ...(progress ? { onProgress: progress.update } : {}),
    ...(helpers ? { removeHelpers: helpers } : {}),
  }
  try {
    if (request.kind === 'purge') {
      const { runPurge } = await import('./purge.js')
      return await runPurge(options, request.paths, ctx)
    }
    const { runClean } = await import('./run.js')
    return await runClean(options, ctx)
  } finally {
    progress?.clear()
    await helpers?.close()
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code
  },
  (err: unknown) => {
    // A CleanerError that reaches here is an expected failure: no stack. Anything else is a bug.
    if (err instanceof CleanerError) process.stderr.write(`build-cleaner: ${err.message}\n`)
    else process.stderr.write(`build-cleaner: internal error (a bug, please report it):\n${(err as Error)?.stack ?? String(err)}\n`)
    process.exitCode = EXIT_FAILED
  },
)
