// What a user of ClickHouse's official Node.js client (@clickhouse/client) does, against a
// tandem cluster.
//
// Run by the integration test `clients::node_client_works_unchanged` with the nodes in
// TANDEM_NODES (host:port,host:port), a user in TANDEM_USER / TANDEM_PASSWORD, and the client
// found through NODE_PATH. Answers are compared with values computed here from the rows this
// script generated. Prints one JSON line with what it checked; exits non-zero on a mismatch.

'use strict'

const { createClient } = require('@clickhouse/client')

const started = Date.now()
let checks = 0

function check(name, condition, detail) {
  if (!condition) {
    console.error(`FAILED: ${name}: ${detail === undefined ? '' : JSON.stringify(detail)}`)
    process.exit(1)
  }
  checks += 1
}

async function main() {
  const nodes = process.env.TANDEM_NODES.split(',')
  const connect = (node, options = {}) =>
    createClient({
      url: `http://${node}`,
      username: process.env.TANDEM_USER,
      password: process.env.TANDEM_PASSWORD,
      ...options,
    })
  // One client compresses requests and responses (gzip), the other does not.
  const first = connect(nodes[0], { compression: { request: true, response: true } })
  const second = connect(nodes[1])

  check('ping', (await first.ping()).success === true)

  await first.command({
    query: 'CREATE TABLE metrics (ts DateTime, host String, cpu Float64, n UInt64, note Nullable(String)) ORDER BY (host, ts)',
  })

  const ROWS = 5000
  const base = Date.UTC(2024, 0, 1) / 1000
  const rows = []
  for (let i = 0; i < ROWS; i++) {
    rows.push({
      ts: base + 61 * i,
      host: `h${i % 4}`,
      cpu: (i * 7919 % 10007) / 100,
      n: i,
      note: i % 3 === 0 ? null : `note ${i}`,
    })
  }
  const inserted = await first.insert({
    table: 'metrics',
    values: rows,
    format: 'JSONEachRow',
    clickhouse_settings: { insert_quorum: '2' },
  })
  check('insert acknowledged', inserted.executed === true, inserted)

  // JSONEachRow results, from the other node.
  const counted = await (await second.query({ query: 'SELECT count() AS c FROM metrics', format: 'JSONEachRow' })).json()
  check('rows replicated', Number(counted[0].c) === ROWS, counted)

  // JSON results with meta; 64-bit integers come quoted, as from ClickHouse.
  const byHost = await (await second.query({
    query: 'SELECT host, count() AS c, max(cpu) AS top FROM metrics GROUP BY host ORDER BY host',
    format: 'JSON',
  })).json()
  check('JSON meta', byHost.meta.map((m) => `${m.name} ${m.type}`).join(',') === 'host String,c Int64,top Nullable(Float64)', byHost.meta)
  check('JSON rows', byHost.rows === 4, byHost.rows)
  for (const row of byHost.data) {
    const mine = rows.filter((r) => r.host === row.host)
    check(`count of ${row.host}`, row.c === String(mine.length), row)
    check(`max of ${row.host}`, row.top === Math.max(...mine.map((r) => r.cpu)), row)
  }

  // Streaming: rows arrive in chunks and add up to the whole table.
  const stream = (await second.query({ query: 'SELECT n, note FROM metrics ORDER BY n', format: 'JSONEachRow' })).stream()
  let streamed = 0
  let nulls = 0
  for await (const chunk of stream) {
    for (const row of chunk) {
      const value = row.json()
      if (Number(value.n) !== streamed) {
        check('streamed in order', false, value)
      }
      if (value.note === null) nulls += 1
      streamed += 1
    }
  }
  check('streamed every row', streamed === ROWS, streamed)
  check('NULLs streamed', nulls === rows.filter((r) => r.note === null).length, nulls)

  // Server-side parameters, and a dashboard bucket.
  const params = await (await first.query({
    query: 'SELECT toStartOfHour(ts) AS h, count() AS c FROM metrics WHERE host = {host:String} GROUP BY h ORDER BY h LIMIT 2',
    query_params: { host: 'h1' },
    format: 'JSONCompactEachRow',
  })).json()
  const h1 = rows.filter((r) => r.host === 'h1')
  const firstHour = h1.filter((r) => r.ts - (r.ts % 3600) === base).length
  check('parameters and buckets', params[0][0] === '2024-01-01 00:00:00' && Number(params[0][1]) === firstHour, params)

  // Errors keep ClickHouse's code and type.
  try {
    await second.query({ query: 'SELECT * FROM no_such_table', format: 'JSON' })
    check('unknown table is an error', false)
  } catch (error) {
    check('error code', error.code === '60' && error.type === 'UNKNOWN_TABLE', { code: error.code, type: error.type })
  }

  await first.close()
  await second.close()
  console.log(JSON.stringify({ checks, seconds: (Date.now() - started) / 1000 }))
}

main().catch((error) => {
  console.error(`FAILED: ${error.stack || error}`)
  process.exit(1)
})
