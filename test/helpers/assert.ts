/** Assertions shared by several test files. */
import * as assert from 'uvu/assert'
import { CleanerError } from '../../src/errors.js'

/** Awaits `promise`, which must reject with a CleanerError of `code`; returns that error. */
export async function rejects(promise: Promise<unknown>, code: string): Promise<CleanerError> {
  try {
    await promise
  } catch (err) {
    assert.instance(err, CleanerError, String(err))
    assert.is((err as CleanerError).code, code, (err as Error).message)
    return err as CleanerError
  }
  assert.unreachable(`expected CleanerError ${code}, nothing was thrown`)
  throw new Error('unreachable')
}
