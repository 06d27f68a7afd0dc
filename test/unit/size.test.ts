import { test } from 'uvu'
import * as assert from 'uvu/assert'
import { parseSize } from '../../src/size.js'
import { CleanerError } from '../../src/errors.js'

const KiB = 1024
const GiB = 1024 ** 3
const TiB = 1024 ** 4

test('K/M/G/T and KiB…TiB are powers of 1024, as df -h and du -h print them', () => {
  assert.is(parseSize('--min-free', '60G'), 60 * GiB)
  assert.is(parseSize('--min-free', '60GiB'), 60 * GiB)
  assert.is(parseSize('--min-free', '512M'), 512 * 1024 ** 2)
  assert.is(parseSize('--min-free', '512MiB'), 512 * 1024 ** 2)
  assert.is(parseSize('--min-free', '4K'), 4 * KiB)
  assert.is(parseSize('--min-free', '2TiB'), 2 * TiB)
  assert.is(parseSize('--min-free', '100GiB'), 100 * GiB)
})

test('KB/MB/GB/TB are powers of 1000 (SI), as disk vendors count', () => {
  assert.is(parseSize('--min-free', '60GB'), 60e9)
  assert.is(parseSize('--min-free', '1KB'), 1000)
  assert.is(parseSize('--min-free', '3MB'), 3e6)
  assert.is(parseSize('--min-free', '1TB'), 1e12)
})

test('a plain integer, or B, is bytes; units are case-insensitive; spaces around are fine', () => {
  assert.is(parseSize('--min-free', '4096'), 4096)
  assert.is(parseSize('--min-free', '0'), 0)
  assert.is(parseSize('--min-free', '100B'), 100)
  assert.is(parseSize('--min-free', '60g'), 60 * GiB)
  assert.is(parseSize('--min-free', '60gib'), 60 * GiB)
  assert.is(parseSize('--min-free', '60gb'), 60e9)
  assert.is(parseSize('--min-free', ' 60 G '), 60 * GiB)
})

test('fractions with a unit round to whole bytes', () => {
  assert.is(parseSize('--min-free', '1.5T'), 1.5 * TiB)
  assert.is(parseSize('--min-free', '0.5K'), 512)
  assert.is(parseSize('--min-free', '1.0001K'), 1024) // 1024.1024 → 1024
  assert.ok(Number.isInteger(parseSize('--min-free', '1.3G')))
})

test('bad sizes name the field, what was expected and what came', () => {
  const cases = ['', 'G', '60 gigs', '60X', '-5G', '1.5', '1.5B', '60GiBB', '60iB', '1e3', '60 G B', '0x10', 'NaN', '99999999999T']
  for (const value of cases) {
    try {
      parseSize('config.minFree', value)
      assert.unreachable(`accepted ${JSON.stringify(value)}`)
    } catch (err) {
      assert.instance(err, CleanerError, `for ${JSON.stringify(value)}`)
      assert.is((err as CleanerError).code, 'EUSAGE')
      assert.is(
        (err as Error).message,
        `config.minFree must be a size like "60G", "512MiB" or "100GB", got ${JSON.stringify(value)}`,
      )
    }
  }
})

test.run()
