#!/usr/bin/env node
// cosmos-local: a local Cosmos DB (SQL API) protocol server for tests.
//
// Wraps the npm package @vercel/cosmosdb-server 1.0.1 at runtime (its handler
// modules are replaced/wrapped before its routing table is built; node_modules
// is never edited) so that the Rust SDK azure_data_cosmos 1.0.0 works against
// it over plain HTTP. See README.md and the FIX comments below.
//
//   node launcher.js [--port N]      (or env COSMOS_PORT; default 8081; 0 = any free port)
//   node launcher.js --port 0 --exit-with-parent   (tests: exit when stdin closes)
//   stdout, once ready: "cosmos-local listening on http://127.0.0.1:<port>"
//   env COSMOS_LOG=1 logs every request to stderr.
//   --aad-verify-url URL (or env COSMOS_AAD_VERIFY_URL): accept Microsoft Entra ID auth
//     (`authorization: type=aad&ver=1.0&sig=<token>`) when GET URL?token=..&resource=..
//     answers 200 (the test's managed-identity endpoint), and refuse control-plane
//     operations (creating/deleting databases and containers) with such tokens, as Cosmos DB
//     does. Without it, any authorization is accepted, as before.
//   --disable-local-auth: refuse master-key auth (the account's `disableLocalAuth`); also
//     switchable at run time with POST /_test/auth {"disableLocalAuth": true|false}.
"use strict";

const fs = require("fs");
const path = require("path");
const { randomUUID } = require("crypto");

let LIB;
try {
  LIB = path.dirname(require.resolve("@vercel/cosmosdb-server"));
} catch (e) {
  console.error(`cosmos-local: @vercel/cosmosdb-server is not installed; run \`npm ci\` in ${__dirname}`);
  process.exit(2);
}
const lib = p => require(path.join(LIB, p));
const cosmosQuery = require(require.resolve("@zeit/cosmosdb-query", { paths: [LIB] })).default;
const trueHeader = lib("true-header").default;
const getValue = lib("utils/get-value").default;
const readItems = lib("handler/_read-items").default;
const { readOperation } = lib("handler/_document-operations");
const { default: getPartitionFromHeader } = lib("utils/get-partition-from-header");

const HOST = "127.0.0.1";
let boundPort = 0;
const http = require("http");

function argValue(name) {
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === name) return argv[i + 1];
    if (argv[i].startsWith(`${name}=`)) return argv[i].slice(name.length + 1);
  }
  return undefined;
}
// Entra ID (AAD) token checking; see the header comment.
const aadVerifyUrl = argValue("--aad-verify-url") || process.env.COSMOS_AAD_VERIFY_URL;
let disableLocalAuth = process.argv.includes("--disable-local-auth");
const authCounters = { aadAccepted: 0, aadRefused: 0, masterAccepted: 0, masterRefused: 0, controlPlaneRefused: 0 };
const verifyAgent = new http.Agent({ keepAlive: true });

const notFound = res => {
  res.statusCode = 404;
  return { code: "NotFound", message: "Entity with the specified id does not exist in the system." };
};
const badRequest = (res, message) => {
  res.statusCode = 400;
  return { code: "BadRequest", message };
};
const pathOf = p => p.slice(1).split("/"); // "/a/b" -> ["a", "b"]

// Partition key from the x-ms-documentdb-partitionkey header, as an array of
// components (e.g. ["Texas"]), or null when absent. "[{}]" is what the JS SDK
// sends for "no partition key"; the stock server treats it as absent, so do we.
function headerPartitionKey(req) {
  const raw = getPartitionFromHeader(req);
  if (raw === undefined || raw === "[{}]" || raw === "[]") return null;
  let pk;
  try {
    pk = JSON.parse(raw);
  } catch (e) {
    throw new Error(`Failed to parse x-ms-documentdb-partitionkey headers: ${raw}`);
  }
  return Array.isArray(pk) ? pk : [pk];
}
// Does `doc` belong to logical partition `pk` (a prefix is enough, as for hierarchical keys)?
const isUndefinedMarker = v => v !== null && typeof v === "object" && Object.keys(v).length === 0;
const pkMatches = (paths, doc, pk) =>
  pk.every((v, i) => {
    const actual = paths[i] ? getValue(pathOf(paths[i]), doc) : undefined;
    return isUndefinedMarker(v) ? actual === undefined : actual === v;
  });

// ---------------------------------------------------------------------------
// Effective partition key (EPK), as azure_data_cosmos_driver computes it for
// V2 hash containers (models/effective_partition_key.rs, murmur_hash.rs):
// MurmurHash3-x64-128 (seed 0) of the encoded components, as a big-endian
// 128-bit number, top 2 bits cleared. MultiHash: one such hash per component.
const M64 = (1n << 64n) - 1n;
const rotl = (x, r) => ((x << r) | (x >> (64n - r))) & M64;
const mul = (a, b) => (a * b) & M64;
const fmix = k => {
  k ^= k >> 33n; k = mul(k, 0xff51afd7ed558ccdn);
  k ^= k >> 33n; k = mul(k, 0xc4ceb9fe1a85ec53n);
  return k ^ (k >> 33n);
};
function murmur3x64_128(buf) {
  const c1 = 0x87c37b91114253d5n;
  const c2 = 0x4cf5ad432745937fn;
  let h1 = 0n;
  let h2 = 0n;
  const len = buf.length;
  let i = 0;
  for (; i + 16 <= len; i += 16) {
    h1 ^= mul(rotl(mul(buf.readBigUInt64LE(i), c1), 31n), c2);
    h1 = (mul((rotl(h1, 27n) + h2) & M64, 5n) + 0x52dce729n) & M64;
    h2 ^= mul(rotl(mul(buf.readBigUInt64LE(i + 8), c2), 33n), c1);
    h2 = (mul((rotl(h2, 31n) + h1) & M64, 5n) + 0x38495ab5n) & M64;
  }
  const rest = len - i;
  let k1 = 0n;
  let k2 = 0n;
  for (let j = rest - 1; j >= 8; j -= 1) k2 ^= BigInt(buf[i + j]) << BigInt((j - 8) * 8);
  if (rest > 8) h2 ^= mul(rotl(mul(k2, c2), 33n), c1);
  for (let j = Math.min(rest, 8) - 1; j >= 0; j -= 1) k1 ^= BigInt(buf[i + j]) << BigInt(j * 8);
  if (rest > 0) h1 ^= mul(rotl(mul(k1, c1), 31n), c2);
  h1 ^= BigInt(len); h2 ^= BigInt(len);
  h1 = (h1 + h2) & M64; h2 = (h2 + h1) & M64;
  h1 = fmix(h1); h2 = fmix(h2);
  h1 = (h1 + h2) & M64; h2 = (h2 + h1) & M64;
  const out = Buffer.alloc(16);
  out.writeBigUInt64BE(h2, 0);
  out.writeBigUInt64BE(h1, 8);
  out[0] &= 0x3f;
  return out;
}
function componentBytes(v) {
  if (v === undefined) return Buffer.from([0x00]);
  if (v === null) return Buffer.from([0x01]);
  if (v === false) return Buffer.from([0x02]);
  if (v === true) return Buffer.from([0x03]);
  if (typeof v === "number") {
    const b = Buffer.alloc(9, 0x05);
    b.writeDoubleLE(v, 1);
    return b;
  }
  if (typeof v === "string") return Buffer.concat([Buffer.from([0x08]), Buffer.from(v, "utf8"), Buffer.from([0xff])]);
  return Buffer.from([0x00]); // objects/arrays are not valid partition key values
}
function effectivePartitionKey(def, values) {
  if (def.kind === "MultiHash") return Buffer.concat(values.map(v => murmur3x64_128(componentBytes(v))));
  return murmur3x64_128(Buffer.concat(values.map(componentBytes)));
}
// EPKs compare as byte strings in which trailing zero bytes do not matter.
function compareEpk(a, b) {
  const n = Math.max(a.length, b.length);
  const pad = x => Buffer.concat([x, Buffer.alloc(n - x.length)]);
  return Buffer.compare(pad(a), pad(b));
}
// Filter for x-ms-start-epk (inclusive) / x-ms-end-epk (exclusive), or null.
function epkFilter(req, def) {
  const start = req.headers["x-ms-start-epk"];
  const end = req.headers["x-ms-end-epk"];
  if (start === undefined && end === undefined) return null;
  // Only V2 hashing is implemented. Containers created by the Rust SDK carry
  // "version": 2; for others (V1: MurmurHash3-32) the range is ignored as the
  // stock server does, so tests on such containers must avoid IN/OR on the key.
  if (!def || def.version !== 2) return null;
  const lo = Buffer.from(start || "", "hex");
  const hi = Buffer.from(end || "FF", "hex");
  return doc => {
    const epk = effectivePartitionKey(def, def.paths.map(p => getValue(pathOf(p), doc)));
    return compareEpk(epk, lo) >= 0 && compareEpk(epk, hi) < 0;
  };
}

// ---------------------------------------------------------------------------
// Handler patches. Must run before lib/index.js (via lib/routes.js) is loaded,
// because routes.js copies each handler's `default` export into its table.
const handlers = {};
for (const f of fs.readdirSync(path.join(LIB, "handler"))) {
  if (f.endsWith(".js") && !f.startsWith("_")) handlers[f.slice(0, -3)] = lib(`handler/${f}`);
}
const patch = (name, make) => {
  handlers[name].default = make(handlers[name].default);
};

// Request bodies are parsed once and cached on the request, so a wrapper can
// look at the body before the stock handler reads it.
const jsonModule = lib("json");
const parseJson = jsonModule.default;
jsonModule.default = req => (req.cosmosLocalBody = req.cosmosLocalBody || parseJson(req));

// FIX 1 (partition key ranges). Real Cosmos returns pkrange ids as strings
// ("0", "1", ...). The stock server stores the number 0; the SDK rejects it
// and container_client() fails with 503/20305 ClientTopologyResolutionFailed.
patch("read-partition-key-ranges", stock => async (...args) => {
  const body = await stock(...args);
  if (body && Array.isArray(body.PartitionKeyRanges)) {
    body.PartitionKeyRanges = body.PartitionKeyRanges.map(r => ({ ...r, id: String(r.id) }));
  }
  return body;
});

// FIX 2 (missing documents). Real Cosmos answers a point read of a missing id,
// or of an existing id under another partition key, with 404 NotFound. The
// stock read handler dereferences the missing item (TypeError -> 500, which the
// SDK retries, so one miss became 4 requests). Documents are stored per
// (partition key value, id), so a lookup under the wrong key simply misses.
// Replace/delete/patch of a missing item already gave 404, but with an empty
// body: the generic wrapper at the end adds {"code":"NotFound",...} to all 404s.
patch("read-document", () => (account, req, res, { dbId, collId, docId }) => {
  const collection = account.database(dbId).collection(collId);
  const result = readOperation(collection, { partitionKey: getPartitionFromHeader(req), id: docId });
  res.statusCode = result.statusCode;
  return result.body;
});

// FIX 3 (query scope) + FIX 4 (EPK sub-queries).
// Real Cosmos runs a query with x-ms-documentdb-partitionkey in that logical
// partition only, and a query with x-ms-documentdb-partitionkeyrangeid against
// that physical partition (the SDK's cross-partition fan-out; here there is
// one range, "0", holding everything). A query with neither is rejected unless
// cross-partition queries are enabled (x-ms-documentdb-query-enablecrosspartition).
// The stock server ignored both headers and demanded a partition-key filter in
// the SQL text (400 "missing partition keys"), so every SDK query failed.
// x-ms-start-epk / x-ms-end-epk: real Cosmos restricts the query to items whose
// effective partition key is in [start, end). The SDK's planner sends one such
// sub-query per value of `WHERE c.<pk> IN (...)` / `OR`; ignoring the range
// returned every match once per sub-query (duplicates). Honoured for V2 keys.
patch("query-documents", () => (account, req, res, { dbId, collId }) =>
  readItems(req, res, "Documents", async ({ continuation, maxItemCount }) => {
    const body = await jsonModule.default(req);
    if (!body.query) return badRequest(res, "missing query");
    const collection = account.database(dbId).collection(collId);
    const def = collection.read().partitionKey;
    const paths = (def && def.paths) || [];
    const pk = headerPartitionKey(req);
    const crossPartition =
      trueHeader(req, "x-ms-documentdb-query-enablecrosspartition") ||
      req.headers["x-ms-documentdb-partitionkeyrangeid"] !== undefined;
    if (!pk && !crossPartition && paths.length && !cosmosQuery(body.query).containsPartitionKeys(paths)) {
      return badRequest(res, "Cross partition query is required but disabled. Set x-ms-documentdb-query-enablecrosspartition to true, specify x-ms-documentdb-partitionkey, or filter on the partition key.");
    }
    const inRange = epkFilter(req, def);
    const keep = doc => (!pk || pkMatches(paths, doc, pk)) && (!inRange || inRange(doc));
    // Run the stock query code over the selected items only.
    const docs = collection.documents;
    const scoped = Object.create(docs, {
      _data: { value: new Map([...docs._data].filter(([, item]) => keep(item.read()))) }
    });
    try {
      return scoped.query(body, { continuation, maxItemCount });
    } catch (err) {
      if (err.badRequest) return badRequest(res, err.message);
      throw err;
    }
  })
);

// FIX 5 (account document). Real Cosmos lists the account's regional endpoints
// (https://<account>-<region>.documents.azure.com:443/) in writableLocations /
// readableLocations, and the SDK sends later requests there. The stock server
// always advertised https://, which fails for a plain-HTTP server: advertise
// http://<the Host the client used, i.e. our host:port>/ instead.
patch("read-meta", () => (account, req) => {
  const endpoint = `http://${req.headers.host || `${HOST}:${boundPort}`}/`;
  const doc = account.read();
  const at = locations => locations.map(l => ({ ...l, databaseAccountEndpoint: endpoint }));
  return { ...doc, writableLocations: at(doc.writableLocations), readableLocations: at(doc.readableLocations) };
});

// EXTRA (not in the stock server). Real Cosmos rejects a write whose
// x-ms-documentdb-partitionkey differs from the key in the document with
// 400/1001; the stock server silently used the body's key (and an upsert could
// then create a second copy). Checked here so such bugs also fail locally.
for (const name of ["create-document", "upsert-document", "replace-document"]) {
  patch(name, stock => async (account, req, res, params) => {
    const pk = headerPartitionKey(req);
    const def = account.database(params.dbId).collection(params.collId).read().partitionKey;
    const body = await jsonModule.default(req);
    if (pk && def && body && typeof body === "object" && !pkMatches(def.paths, body, pk)) {
      res.setHeader("x-ms-substatus", "1001");
      return badRequest(res, "PartitionKey extracted from document doesn't match the one specified in the header.");
    }
    return stock(account, req, res, params);
  });
}

// EXTRA (not in the stock server): the change feed, in "latest version" mode, as
// real Cosmos serves it over REST: GET .../docs with `A-IM: Incremental feed`.
// - Every write (create/replace/upsert/patch) gets the next logical sequence number
//   (LSN) of its container; the feed lists the current version of each document
//   changed after the continuation, ordered by LSN, each with `_lsn` (only in the
//   feed: documents read or queried carry no `_lsn`, as in real Cosmos).
// - `If-None-Match`: absent = from the beginning, `*` = from now, else the `etag`
//   of an earlier feed response. `x-ms-max-item-count` bounds the page (default 100).
// - 200 {"_rid","Documents":[...],"_count"} with `etag: "<LSN of the last change>"`,
//   or 304 (no body) with the unchanged `etag` when nothing changed.
// - Deletes are not reported, as in real Cosmos's default (latest version) mode.
// One partition key range ("0") holds everything here, so the LSNs are per container.
const itemsProto = lib("account/items").default.prototype;
const feeds = new WeakMap(); // Items instance -> { last: LSN, byRid: Map<_rid, LSN> }
const feedOf = items => {
  let f = feeds.get(items);
  if (!f) {
    f = { last: 0, byRid: new Map() };
    feeds.set(items, f);
  }
  return f;
};
const stockSet = itemsProto._set;
itemsProto._set = function (data) {
  const f = feedOf(this);
  f.last += 1;
  f.byRid.set(data._rid, f.last);
  return stockSet.call(this, data);
};
patch("read-documents", stock => (account, req, res, params) => {
  if (String(req.headers["a-im"] || "").toLowerCase() !== "incremental feed") return stock(account, req, res, params);
  // The stock server answers every A-IM request with If-None-Match as 304 "etag: 1"
  // after the handler ran; hide the header from that code.
  delete req.headers["a-im"];
  const collection = account.database(params.dbId).collection(params.collId);
  const docs = collection.documents;
  const f = feedOf(docs);
  const since = req.headers["if-none-match"];
  let from;
  if (since === undefined || since === "") from = 0;
  else if (since === "*") from = f.last;
  else {
    from = Number(String(since).replace(/"/g, ""));
    if (!Number.isSafeInteger(from) || from < 0) return badRequest(res, "If-None-Match is not a change feed continuation (an etag of an earlier change feed response, or *)");
  }
  const requested = parseInt(req.headers["x-ms-max-item-count"], 10);
  const limit = requested > 0 ? requested : 100;
  const changed = [];
  for (const item of docs._data.values()) {
    const doc = item.read();
    const lsn = f.byRid.get(doc._rid) || 0;
    if (lsn > from) changed.push({ ...doc, _lsn: lsn });
  }
  changed.sort((a, b) => a._lsn - b._lsn);
  const page = changed.slice(0, limit);
  const upTo = page.length ? page[page.length - 1]._lsn : from;
  res.setHeader("etag", `"${upTo}"`);
  res.setHeader("lsn", String(f.last));
  res.setHeader("x-ms-item-count", String(page.length));
  if (!page.length) {
    res.statusCode = 304;
    return "";
  }
  return { _rid: collection.read()._rid, Documents: page, _count: page.length };
});

// Generic wrapper around every handler:
// - a missing database/container is 404 NotFound, as in real Cosmos (the stock
//   create/upsert handlers threw a TypeError -> 500 for a missing container);
// - every 404 carries {"code":"NotFound","message":...} as in real Cosmos;
// - a missing/unparsable x-ms-documentdb-partitionkey is 400 BadRequest (real
//   Cosmos) instead of 500.
for (const mod of Object.values(handlers)) {
  const inner = mod.default;
  mod.default = async (account, req, res, params) => {
    const { dbId, collId } = params;
    if (dbId !== undefined && collId !== undefined && !account.database(dbId).collection(collId).read()) return notFound(res);
    if (dbId !== undefined && !account.database(dbId).read()) return notFound(res);
    let body;
    try {
      body = await inner(account, req, res, params);
    } catch (err) {
      if (/^Failed to parse x-ms-documentdb-partitionkey/.test(err.message)) return badRequest(res, err.message);
      throw err;
    }
    if (res.statusCode === 404 && !(body && body.code)) return notFound(res);
    return body;
  };
}

// Keep a handle on the account object (for POST /_test/reset).
let account;
const accountModule = lib("account");
const StockAccount = accountModule.default;
accountModule.default = class extends StockAccount {
  constructor(...args) {
    super(...args);
    account = this;
  }
};

const { createHttpServer } = lib("index"); // loads routes.js: patches must be done by now

// ---------------------------------------------------------------------------
// TEST SUPPORT (not part of Cosmos DB): counters and fault injection, under
// /_test/, a prefix real Cosmos never has.
const zeroStats = () => ({ queries: 0, reads: 0, upserts: 0, deletes: 0, requests: 0 });
let stats = zeroStats();
let statsByDb = new Map(); // database id -> counters, so parallel tests can count their own
let faults = []; // [{ kind, count, status?, retryAfterMs?, delayMs? }]
const STAT_OF = { query: "queries", read: "reads", upsert: "upserts", delete: "deletes" };
const FAULT_KINDS = ["query", "read", "upsert", "delete", "any"];
const CODES = { 400: "BadRequest", 403: "Forbidden", 404: "NotFound", 408: "RequestTimeout", 409: "Conflict", 410: "Gone", 412: "PreconditionFailed", 429: "TooManyRequests", 449: "RetryWith", 500: "InternalServerError", 503: "ServiceUnavailable" };

function normalisePath(url) {
  let p = new URL(url, "http://x").pathname;
  if (p.startsWith("//")) p = p.slice(1);
  while (p.length > 1 && p.endsWith("/")) p = p.slice(0, -1);
  return p;
}
// The same classification as the stock router uses to pick a handler.
function classify(req, p) {
  const docs = /^\/dbs\/[^/]+\/colls\/[^/]+\/docs$/.test(p);
  const doc = /^\/dbs\/[^/]+\/colls\/[^/]+\/docs\/[^/]+$/.test(p);
  if (req.method === "POST" && docs && (trueHeader(req, "x-ms-documentdb-isquery") || req.headers["content-type"] === "application/query+json")) return "query";
  if (req.method === "POST" && docs && trueHeader(req, "x-ms-documentdb-is-upsert")) return "upsert";
  if (req.method === "GET" && doc) return "read";
  if (req.method === "DELETE" && doc) return "delete";
  return "other";
}
const sleep = ms => new Promise(r => setTimeout(r, ms));
const send = (res, status, body, headers = {}) => {
  res.writeHead(status, { "content-type": "application/json", ...headers });
  res.end(JSON.stringify(body));
};
const readBody = req =>
  new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", c => chunks.push(c)).on("end", () => resolve(Buffer.concat(chunks).toString())).on("error", reject);
  });

async function testControl(req, res, p) {
  const route = `${req.method} ${p}`;
  if (route === "GET /_test/stats") {
    const db = new URL(req.url, "http://x").searchParams.get("db");
    return send(res, 200, db === null ? stats : statsByDb.get(db) || zeroStats());
  }
  if (route === "POST /_test/stats/reset") {
    stats = zeroStats();
    statsByDb = new Map();
    return send(res, 200, stats);
  }
  if (route === "GET /_test/faults") return send(res, 200, { faults });
  if (route === "DELETE /_test/faults") {
    const db = new URL(req.url, "http://x").searchParams.get("db");
    faults = db === null ? [] : faults.filter(f => f.db !== db);
    return send(res, 200, { faults });
  }
  if (route === "POST /_test/faults") {
    let f;
    try {
      f = JSON.parse((await readBody(req)) || "{}");
    } catch (e) {
      return send(res, 400, { code: "BadRequest", message: `invalid JSON: ${e.message}` });
    }
    const kind = f.kind || "any";
    const count = f.count === undefined ? 1 : Number(f.count);
    if (!FAULT_KINDS.includes(kind) || !(count > 0) || (f.status === undefined && !f.delayMs)) {
      return send(res, 400, { code: "BadRequest", message: `need kind in ${FAULT_KINDS.join("|")}, count > 0, and status and/or delayMs` });
    }
    faults.push({ kind, count, status: f.status, retryAfterMs: f.retryAfterMs, delayMs: f.delayMs, db: f.db });
    return send(res, 200, { faults });
  }
  if (route === "GET /_test/auth") return send(res, 200, { disableLocalAuth, aad: Boolean(aadVerifyUrl), ...authCounters });
  if (route === "POST /_test/auth") {
    let body;
    try {
      body = JSON.parse((await readBody(req)) || "{}");
    } catch (e) {
      return send(res, 400, { code: "BadRequest", message: `invalid JSON: ${e.message}` });
    }
    if (typeof body.disableLocalAuth !== "boolean") return send(res, 400, { code: "BadRequest", message: "need disableLocalAuth: true|false" });
    disableLocalAuth = body.disableLocalAuth;
    return send(res, 200, { disableLocalAuth });
  }
  if (route === "POST /_test/reset") {
    // Drop every database (and with them containers and items), faults and counters.
    account.databases._data.clear();
    account.databases._index.clear();
    faults = [];
    stats = zeroStats();
    statsByDb = new Map();
    return send(res, 200, { reset: true });
  }
  return send(res, 404, { code: "NotFound", message: `no test control ${route}` });
}

// Applies the first pending fault for this request, if any. Returns true when
// the request has been answered.
async function applyFault(req, res, kind, db) {
  const f = faults.find(x => (x.kind === "any" || x.kind === kind) && (x.db === undefined || x.db === db));
  if (!f) return false;
  f.count -= 1;
  if (f.count <= 0) faults = faults.filter(x => x !== f);
  if (f.delayMs) await sleep(f.delayMs);
  if (f.status === undefined) return false; // delay only: serve normally
  const headers = { "x-ms-activity-id": randomUUID(), "x-ms-request-charge": "0" };
  if (f.status === 429) {
    // What real Cosmos sends when throttling (request rate too large).
    headers["x-ms-retry-after-ms"] = String(f.retryAfterMs === undefined ? 10 : f.retryAfterMs);
    headers["x-ms-substatus"] = "3200";
  }
  req.resume(); // discard the request body
  send(res, f.status, { code: CODES[f.status] || "InjectedFault", message: `fault injected by cosmos-local /_test/faults (kind ${f.kind})` }, headers);
  return true;
}

// ---------------------------------------------------------------------------
// AUTH CHECK (only with --aad-verify-url or --disable-local-auth). The SDK sends
// `authorization: <url-encoded type=aad&ver=1.0&sig=<token>>` with Entra ID and
// `type=master&ver=1.0&sig=<hmac>` with a key (the HMAC is not checked here).
const verifyToken = token =>
  new Promise(resolve => {
    const url = `${aadVerifyUrl}?resource=${encodeURIComponent("https://cosmos.azure.com")}&token=${encodeURIComponent(token)}`;
    const r = http.get(url, { agent: verifyAgent }, vres => {
      vres.resume();
      resolve(vres.statusCode === 200);
    });
    r.on("error", () => resolve(false));
    r.setTimeout(5000, () => r.destroy());
  });
// Databases, containers, offers: control plane, which Entra ID data-plane roles do not cover.
const controlPlane = (req, p) =>
  (req.method === "POST" && /^\/dbs(\/[^/]+\/colls)?$/.test(p)) ||
  (["PUT", "DELETE"].includes(req.method) && /^\/dbs\/[^/]+(\/colls\/[^/]+)?$/.test(p)) ||
  p.startsWith("/offers");
// Resolves to true when the request was refused (and answered).
async function refuseUnauthorized(req, res, p) {
  if (!aadVerifyUrl && !disableLocalAuth) return false;
  let auth = "";
  try {
    auth = decodeURIComponent(req.headers.authorization || "");
  } catch (e) {
    auth = "";
  }
  const fields = new URLSearchParams(auth);
  const refuse = (status, sub, message) => {
    req.resume();
    send(res, status, { code: CODES[status] || "Unauthorized", message }, { "x-ms-substatus": String(sub), "x-ms-activity-id": randomUUID() });
    return true;
  };
  if (fields.get("type") === "aad") {
    if (!aadVerifyUrl) return refuse(401, 0, "Entra ID (AAD) tokens are not accepted by this server (no --aad-verify-url).");
    if (!(await verifyToken(fields.get("sig") || ""))) {
      authCounters.aadRefused += 1;
      return refuse(401, 0, "The input authorization token can't serve the request. The token is expired or invalid.");
    }
    if (controlPlane(req, p)) {
      authCounters.controlPlaneRefused += 1;
      return refuse(403, 5300, `Operation '${req.method}' on resource '${p}' is not allowed through Azure Cosmos DB endpoint with Microsoft Entra ID tokens. Perform this operation through Azure Resource Manager, Azure Portal, Azure CLI or Azure PowerShell.`);
    }
    authCounters.aadAccepted += 1;
    return false;
  }
  if (disableLocalAuth) {
    authCounters.masterRefused += 1;
    return refuse(403, 5302, "Local Authorization is disabled. Use an AAD token to authorize all requests.");
  }
  authCounters.masterAccepted += 1;
  return false;
}
CODES[401] = "Unauthorized";

// ---------------------------------------------------------------------------
// FIX 6 (keep-alive). Real Cosmos keeps connections open; the stock server
// sent `connection: close` on every response unless created with keepAlive.
// The idle timeout is kept above the client's (reqwest: 90 s) so that the
// client, not the server, closes idle connections (no reuse races).
const server = createHttpServer({ keepAlive: true });
server.keepAliveTimeout = 120000;
server.headersTimeout = 125000;
const [stockListener] = server.listeners("request");
server.removeAllListeners("request");
server.on("request", (req, res) => {
  const started = Date.now();
  if (process.env.COSMOS_LOG) {
    res.on("finish", () => console.error(`${req.method} ${req.url} -> ${res.statusCode} (${Date.now() - started} ms)`));
  }
  const p = normalisePath(req.url);
  if (p.startsWith("/_test/")) {
    testControl(req, res, p).catch(err => send(res, 500, { code: "InternalServerError", message: err.message }));
    return;
  }
  // The stock server names itself https:// in content-location; we are http://.
  const setHeader = res.setHeader;
  res.setHeader = function (name, value) {
    if (name === "content-location") value = String(value).replace(/^https:/, "http:");
    return setHeader.call(this, name, value);
  };
  const kind = classify(req, p);
  const dbMatch = /^\/dbs\/([^/]+)/.exec(p);
  const db = dbMatch ? decodeURIComponent(dbMatch[1]) : undefined;
  const scoped = [stats];
  if (db !== undefined) {
    if (!statsByDb.has(db)) statsByDb.set(db, zeroStats());
    scoped.push(statsByDb.get(db));
  }
  for (const st of scoped) {
    st.requests += 1;
    if (STAT_OF[kind]) st[STAT_OF[kind]] += 1;
  }
  refuseUnauthorized(req, res, p)
    .then(refused => refused || applyFault(req, res, kind, db).then(answered => answered || stockListener(req, res)))
    .catch(err => send(res, 500, { code: "InternalServerError", message: err.message }));
});

// ---------------------------------------------------------------------------
function portFromArgs() {
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === "--port") return argv[i + 1];
    if (argv[i].startsWith("--port=")) return argv[i].slice(7);
  }
  return process.env.COSMOS_PORT || "8081";
}
const port = Number(portFromArgs());
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`cosmos-local: invalid port ${portFromArgs()}`);
  process.exit(2);
}
server.on("error", err => {
  console.error(`cosmos-local: ${err.message}`);
  process.exit(1);
});
server.listen(port, HOST, () => {
  boundPort = server.address().port;
  process.stdout.write(`cosmos-local listening on http://${HOST}:${boundPort}\n`);
});
const stop = () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

// Test support: with --exit-with-parent, stop when standard input closes, i.e. when the test
// process that started us (and holds the other end of the pipe) exits, however it exits.
if (process.argv.includes("--exit-with-parent")) {
  process.stdin.on("end", stop);
  process.stdin.on("error", stop);
  process.stdin.resume();
}
