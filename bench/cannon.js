#!/usr/bin/env node
// autocannon with microsecond latency percentiles.
//
// The autocannon CLI (`autocannon -c N -d S -j -S SOCKET URL`) keeps latencies in whole
// milliseconds, so every sub-millisecond answer reads as "0 ms" and p99 ratios between fast
// servers mean little. This driver runs the same autocannon engine with the same options
// (connections, duration, Unix socket, keep-alive, no pipelining), records every 2xx response
// time from its 'response' event at microsecond resolution, and prints autocannon's own result
// JSON with one extra key, "latencyMicros".
//
// usage: node bench/cannon.js [--socket PATH] --url URL -c N -d SECONDS [-w WARMUP_SECONDS]
//        [--latencies FILE]   (every 2xx response time, ms, as little-endian float64)
//        [--headers FILE]     (a JSON object of request headers, e.g. an Authorization header:
//                              kept out of the command line, which every local user can read)
// Without --socket, the URL's host and port are connected to over TCP.
// Needs autocannon where require() finds it: NODE_PATH="$(npm root -g)" for a global install.
'use strict'

const fs = require('fs')
const autocannon = require('autocannon')

function parseArgs (argv) {
  const opts = { connections: 10, duration: 10, warmup: 0, url: 'http://localhost/v1/token' }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`)
      return argv[++i]
    }
    if (a === '-c' || a === '--connections') opts.connections = Number(next())
    else if (a === '-d' || a === '--duration') opts.duration = Number(next())
    else if (a === '-w' || a === '--warmup') opts.warmup = Number(next())
    else if (a === '-S' || a === '--socket') opts.socketPath = next()
    else if (a === '--url') opts.url = next()
    else if (a === '--latencies') opts.latencies = next()
    else if (a === '--headers') opts.headers = JSON.parse(fs.readFileSync(next(), 'utf8'))
    else throw new Error(`unknown argument ${a}`)
  }
  return opts
}

function run (opts, record) {
  return new Promise((resolve, reject) => {
    const latencies = []
    const options = {
      url: opts.url,
      connections: opts.connections,
      duration: opts.duration,
      pipelining: 1,
      headers: opts.headers || {}
    }
    if (opts.socketPath) options.socketPath = opts.socketPath
    const instance = autocannon(options, (err, result) => (err ? reject(err) : resolve({ result, latencies })))
    if (record) {
      instance.on('response', (client, statusCode, resBytes, responseTime) => {
        if (statusCode >= 200 && statusCode < 300) latencies.push(responseTime)
      })
    }
  })
}

function percentile (sorted, p) {
  if (sorted.length === 0) return null
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[rank]
}

async function main () {
  const opts = parseArgs(process.argv.slice(2))
  let warmupRequests = 0
  if (opts.warmup > 0) {
    const warm = await run({ ...opts, duration: opts.warmup }, false)
    warmupRequests = warm.result.requests.total
  }
  const { result, latencies } = await run(opts, true)
  const sorted = Float64Array.from(latencies).sort()
  if (opts.latencies) fs.writeFileSync(opts.latencies, Buffer.from(sorted.buffer))
  result.warmupRequests = warmupRequests
  const us = (ms) => (ms === null ? null : Math.round(ms * 1000))
  let sum = 0
  for (const v of sorted) sum += v
  result.latencyMicros = {
    count: sorted.length,
    mean: sorted.length ? Math.round((sum / sorted.length) * 1000) : null,
    p50: us(percentile(sorted, 50)),
    p90: us(percentile(sorted, 90)),
    p99: us(percentile(sorted, 99)),
    p99_9: us(percentile(sorted, 99.9)),
    max: us(sorted.length ? sorted[sorted.length - 1] : null)
  }
  process.stdout.write(JSON.stringify(result) + '\n')
}

main().catch((err) => {
  process.stderr.write(`cannon.js: ${err.message}\n`)
  process.exit(2)
})
