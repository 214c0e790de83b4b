#!/usr/bin/env node
// Self-test for launcher.js: starts it on a free port and checks every fix and
// test control over real HTTP, with the headers azure_data_cosmos sends.
//   node selftest.js            (exit code 0 = all checks passed)
"use strict";

const assert = require("assert");
const http = require("http");
const path = require("path");
const { spawn } = require("child_process");

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
let base;
let sockets = 0;

function call(method, urlPath, { headers = {}, body } = {}) {
  const data = body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request(
      `${base}${urlPath}`,
      {
        method,
        agent,
        headers: {
          authorization: "type%3Dmaster%26ver%3D1.0%26sig%3Danything",
          "x-ms-version": "2020-07-15",
          "x-ms-date": new Date().toUTCString(),
          ...(data !== undefined ? { "content-type": "application/json" } : {}),
          ...headers
        }
      },
      res => {
        let text = "";
        res.on("data", c => (text += c)).on("end", () => {
          let json;
          try { json = JSON.parse(text); } catch (e) { json = text; }
          resolve({ status: res.statusCode, headers: res.headers, body: json });
        });
      }
    );
    req.on("socket", s => { if (!s.counted) { s.counted = true; sockets += 1; } });
    req.on("error", reject);
    req.end(data);
  });
}
const pk = v => ({ "x-ms-documentdb-partitionkey": JSON.stringify([v]) });
const queryHeaders = { "content-type": "application/query+json", "x-ms-documentdb-isquery": "true" };
const query = (coll, sql, params, headers) =>
  call("POST", `/dbs/tutorial/colls/${coll}/docs`, { headers: { ...queryHeaders, ...headers }, body: { query: sql, parameters: params || [] } });
const show = (label, r) => console.log(`${label}: ${r.status} ${JSON.stringify(r.body).slice(0, 160)}`);

async function main() {
  const child = spawn(process.execPath, [path.join(__dirname, "launcher.js"), "--port", "0"], { stdio: ["ignore", "pipe", "inherit"] });
  base = await new Promise((resolve, reject) => {
    child.stdout.on("data", d => {
      const m = /^cosmos-local listening on (http:\/\/127\.0\.0\.1:\d+)$/m.exec(String(d));
      if (m) resolve(m[1]);
    });
    child.on("exit", code => reject(new Error(`launcher exited ${code}`)));
  });
  console.log(`started: ${base}`);

  let r = await call("GET", "/");
  assert.strictEqual(r.body.writableLocations[0].databaseAccountEndpoint, `${base}/`);
  assert.strictEqual(r.body.readableLocations[0].databaseAccountEndpoint, `${base}/`);
  assert.strictEqual(r.headers.connection, "keep-alive");
  show("GET / writableLocations", { status: r.status, body: r.body.writableLocations });

  assert.strictEqual((await call("POST", "/dbs", { body: { id: "tutorial" } })).status, 201);
  assert.strictEqual((await call("POST", "/dbs", { body: { id: "tutorial" } })).status, 409);
  const pkDef = p => ({ paths: [p], kind: "Hash", version: 2 }); // what the SDK's ContainerProperties sends
  r = await call("POST", "/dbs/tutorial/colls", { body: { id: "us_cities", partitionKey: pkDef("/state") } });
  assert.strictEqual(r.status, 201);
  r = await call("GET", "/dbs/tutorial/colls/us_cities/pkranges");
  show("GET pkranges", r);
  assert.strictEqual(r.body.PartitionKeyRanges[0].id, "0");

  const cities = [
    ["austin", "Austin", "Texas"], ["houston", "Houston", "Texas"], ["dallas", "Dallas", "Texas"],
    ["pensacola", "Pensacola", "Florida"], ["miami", "Miami", "Florida"], ["austin-mn", "Austin", "Minnesota"]
  ];
  for (const [id, city, state] of cities) {
    r = await call("POST", "/dbs/tutorial/colls/us_cities/docs", {
      headers: { ...pk(state), "x-ms-documentdb-is-upsert": "true" },
      body: { id, city, state }
    });
    assert.strictEqual(r.status, 201, JSON.stringify(r.body));
  }
  r = await call("POST", "/dbs/tutorial/colls/us_cities/docs", {
    headers: { ...pk("Texas"), "x-ms-documentdb-is-upsert": "true" },
    body: { id: "austin", city: "Austin", state: "Texas", population: 961855 }
  });
  show("upsert existing", r);
  assert.strictEqual(r.status, 200);
  r = await call("POST", "/dbs/tutorial/colls/us_cities/docs", {
    headers: { ...pk("Florida"), "x-ms-documentdb-is-upsert": "true" },
    body: { id: "austin", city: "Austin", state: "Texas" }
  });
  show("upsert with wrong partition key header", r);
  assert.strictEqual(r.status, 400);

  r = await call("GET", "/dbs/tutorial/colls/us_cities/docs/austin", { headers: pk("Texas") });
  show("read austin [Texas]", r);
  assert.strictEqual(r.status, 200);
  assert.strictEqual(r.body.population, 961855);
  for (const [label, id, state] of [["read missing id", "nowhere", "Texas"], ["read austin [Florida]", "austin", "Florida"]]) {
    r = await call("GET", `/dbs/tutorial/colls/us_cities/docs/${id}`, { headers: pk(state) });
    show(label, r);
    assert.strictEqual(r.status, 404);
    assert.strictEqual(r.body.code, "NotFound");
  }
  r = await call("PUT", "/dbs/tutorial/colls/us_cities/docs/nowhere", { headers: pk("Texas"), body: { id: "nowhere", state: "Texas" } });
  show("replace missing", r);
  assert.deepStrictEqual([r.status, r.body.code], [404, "NotFound"]);
  r = await call("DELETE", "/dbs/tutorial/colls/us_cities/docs/nowhere", { headers: pk("Texas") });
  show("delete missing", r);
  assert.deepStrictEqual([r.status, r.body.code], [404, "NotFound"]);
  r = await call("GET", "/dbs/tutorial/colls/nope/docs/austin", { headers: pk("Texas") });
  assert.deepStrictEqual([r.status, r.body.code], [404, "NotFound"]);
  r = await call("POST", "/dbs/tutorial/colls/nope/docs", { headers: { ...pk("Texas"), "x-ms-documentdb-is-upsert": "true" }, body: { id: "x", state: "Texas" } });
  assert.deepStrictEqual([r.status, r.body.code], [404, "NotFound"]);

  const byCity = ["SELECT * FROM c WHERE c.city = @c", [{ name: "@c", value: "Austin" }]];
  r = await query("us_cities", ...byCity, pk("Texas"));
  show("query Austin, partition [Texas]", r);
  assert.deepStrictEqual(r.body.Documents.map(d => d.id), ["austin"]);
  r = await query("us_cities", ...byCity, { "x-ms-documentdb-partitionkeyrangeid": "0" });
  show("query Austin, pkrange 0", r);
  assert.deepStrictEqual(r.body.Documents.map(d => d.id).sort(), ["austin", "austin-mn"]);
  r = await query("us_cities", ...byCity, { "x-ms-documentdb-query-enablecrosspartition": "true" });
  assert.strictEqual(r.body._count, 2);
  r = await query("us_cities", ...byCity);
  show("query Austin, no scope", r);
  assert.strictEqual(r.status, 400);

  // Paging within a partition.
  const seen = [];
  let continuation;
  let pages = 0;
  do {
    r = await query("us_cities", "SELECT * FROM c ORDER BY c.id", [], {
      ...pk("Texas"), "x-ms-max-item-count": "2", ...(continuation ? { "x-ms-continuation": continuation } : {})
    });
    pages += 1;
    console.log(`page ${pages}: ${r.status} ids=${r.body.Documents.map(d => d.id)} x-ms-item-count=${r.headers["x-ms-item-count"]} x-ms-continuation=${r.headers["x-ms-continuation"] || "(none)"}`);
    seen.push(...r.body.Documents.map(d => d.id));
    continuation = r.headers["x-ms-continuation"];
  } while (continuation);
  assert.deepStrictEqual(seen, ["austin", "dallas", "houston"]);
  assert.strictEqual(pages, 2);

  // EPK ranges: values and expected V2 EPKs from azure_data_cosmos_driver's own tests.
  r = await call("POST", "/dbs/tutorial/colls", { body: { id: "epk", partitionKey: pkDef("/pk") } });
  assert.strictEqual(r.status, 201);
  const vectors = [
    ["", "32E9366E637A71B4E710384B2F4970A0"], ["partitionKey", "013AEFCF77FA271571CF665A58C933F1"],
    ["redmond", "22E342F38A486A088463DFF7838A5963"], ["a".repeat(1024), "332BDF5512AE49615F32C7D98C2DB86C"],
    [null, "378867E4430E67857ACE5C908374FE16"], [true, "0E711127C5B5A8E4726AC6DD306A3E59"],
    [false, "2FE1BE91E90A3439635E0E9E37361EF2"], [-128, "01DAEDABF913540367FE219B2AD06148"],
    [127, "0C507ACAC853ECA7977BF4CEFB562A25"], [5, "19C08621B135968252FB34B4CF66F811"],
    [5.123124190509124, "0EF2E2D82460884AF0F6440BE4F726A8"], [2147483647, "2D9349D64712AEB5EB1406E2F0BE2725"]
  ];
  for (const [i, [v]] of vectors.entries()) {
    r = await call("POST", "/dbs/tutorial/colls/epk/docs", { headers: { ...pk(v), "x-ms-documentdb-is-upsert": "true" }, body: { id: `d${i}`, pk: v } });
    assert.strictEqual(r.status, 201, JSON.stringify(r.body));
  }
  const successor = hex => (BigInt(`0x${hex}`) + 1n).toString(16).toUpperCase().padStart(32, "0");
  for (const [i, [, epk]] of vectors.entries()) {
    r = await query("epk", "SELECT c.id FROM c", [], {
      "x-ms-documentdb-partitionkeyrangeid": "0", "x-ms-start-epk": epk, "x-ms-end-epk": successor(epk), "x-ms-read-key-type": "EffectivePartitionKeyRange"
    });
    assert.deepStrictEqual(r.body.Documents.map(d => d.id), [`d${i}`], `EPK ${epk}`);
  }
  console.log(`EPK: ${vectors.length}/${vectors.length} single-key ranges [epk, epk+1) each returned exactly their document`);
  // The IN shape from the spec: the SDK sends the same SQL once per value, each
  // scoped to that value's EPK; each sub-query must return only its own rows.
  const inSql = 'SELECT c.id FROM c WHERE c.pk IN ("redmond", "partitionKey")';
  for (const [i, [, epk]] of vectors.entries()) {
    if (i !== 1 && i !== 2) continue;
    r = await query("epk", inSql, [], { "x-ms-documentdb-partitionkeyrangeid": "0", "x-ms-start-epk": epk, "x-ms-end-epk": successor(epk) });
    assert.deepStrictEqual(r.body.Documents.map(d => d.id), [`d${i}`]);
  }
  r = await query("epk", inSql, [], { "x-ms-documentdb-partitionkeyrangeid": "0" });
  assert.deepStrictEqual(r.body.Documents.map(d => d.id).sort(), ["d1", "d2"]);
  r = await query("epk", "SELECT c.id FROM c", [], { "x-ms-documentdb-partitionkeyrangeid": "0", "x-ms-start-epk": "", "x-ms-end-epk": "FF" });
  assert.strictEqual(r.body._count, vectors.length);
  console.log("EPK: IN sub-queries scoped by range return no duplicates; full range [\"\", FF) returns all");

  // Test controls: stats and faults.
  await call("POST", "/_test/stats/reset");
  r = await call("POST", "/_test/faults", { body: { kind: "query", count: 2, status: 429, retryAfterMs: 7 } });
  show("POST /_test/faults", r);
  for (let i = 1; i <= 3; i += 1) {
    r = await query("us_cities", ...byCity, pk("Texas"));
    console.log(`query #${i}: ${r.status} retry-after-ms=${r.headers["x-ms-retry-after-ms"] || "-"} substatus=${r.headers["x-ms-substatus"] || "-"} ${JSON.stringify(r.body).slice(0, 100)}`);
    assert.strictEqual(r.status, i <= 2 ? 429 : 200);
    if (i <= 2) {
      assert.strictEqual(r.headers["x-ms-retry-after-ms"], "7");
      assert.strictEqual(r.headers["x-ms-substatus"], "3200");
      assert.strictEqual(r.body.code, "TooManyRequests");
    }
  }
  await call("POST", "/_test/faults", { body: { kind: "read", count: 1, delayMs: 300 } });
  let t = Date.now();
  r = await call("GET", "/dbs/tutorial/colls/us_cities/docs/austin", { headers: pk("Texas") });
  const delayed = Date.now() - t;
  console.log(`delayed read: ${r.status} after ${delayed} ms`);
  assert.strictEqual(r.status, 200);
  assert.ok(delayed >= 290);
  await call("POST", "/_test/faults", { body: { kind: "any", count: 5, status: 503 } });
  r = await call("DELETE", "/_test/faults");
  assert.deepStrictEqual(r.body.faults, []);
  await call("DELETE", "/dbs/tutorial/colls/us_cities/docs/dallas", { headers: pk("Texas") });
  r = await call("GET", "/_test/stats");
  show("GET /_test/stats", r);
  assert.deepStrictEqual(r.body, { queries: 3, reads: 1, upserts: 0, deletes: 1, requests: 5 });

  // Change feed (latest version mode): A-IM: Incremental feed, If-None-Match continuation.
  const feed = (since, headers = {}) =>
    call("GET", "/dbs/tutorial/colls/us_cities/docs", {
      headers: { "a-im": "Incremental feed", ...(since === undefined ? {} : { "if-none-match": since }), ...headers }
    });
  r = await feed("*");
  assert.strictEqual(r.status, 304);
  const now = r.headers.etag;
  assert.match(now, /^"\d+"$/);
  r = await feed(now);
  assert.strictEqual(r.status, 304);
  assert.strictEqual(r.headers.etag, now);
  r = await call("POST", "/dbs/tutorial/colls/us_cities/docs", {
    headers: { ...pk("Texas"), "x-ms-documentdb-is-upsert": "true" },
    body: { id: "austin", city: "Austin", state: "Texas", population: 1 }
  });
  assert.strictEqual(r.status, 200);
  const written = r.headers.etag;
  assert.strictEqual(written, r.body._etag);
  assert.strictEqual(r.body._lsn, undefined, "documents carry no _lsn outside the feed");
  await call("POST", "/dbs/tutorial/colls/us_cities/docs", {
    headers: { ...pk("Ohio"), "x-ms-documentdb-is-upsert": "true" },
    body: { id: "columbus", city: "Columbus", state: "Ohio" }
  });
  r = await feed(now, { "x-ms-max-item-count": "1" });
  show("change feed page 1", r);
  assert.strictEqual(r.status, 200);
  assert.deepStrictEqual(r.body.Documents.map(d => [d.id, d._etag]), [["austin", written]]);
  const first = r.headers.etag;
  assert.strictEqual(first, `"${r.body.Documents[0]._lsn}"`);
  r = await feed(first);
  assert.deepStrictEqual(r.body.Documents.map(d => d.id), ["columbus"]);
  r = await feed(r.headers.etag);
  assert.strictEqual(r.status, 304);
  r = await feed(undefined);
  assert.ok(r.body.Documents.length >= 2, "no If-None-Match: from the beginning");
  assert.strictEqual((await feed("nope")).status, 400);

  r = await call("POST", "/_test/reset");
  assert.strictEqual(r.status, 200);
  r = await call("GET", "/dbs/tutorial");
  show("after /_test/reset, GET /dbs/tutorial", r);
  assert.strictEqual(r.status, 404);

  console.log(`TCP connections used for all requests: ${sockets}`);
  const exit = new Promise(resolve => child.on("exit", (code, signal) => resolve({ code, signal })));
  agent.destroy();
  child.kill("SIGTERM");
  const { code } = await exit;
  console.log(`SIGTERM -> launcher exit code ${code}`);
  assert.strictEqual(code, 0);
  await authChecks();
  console.log("selftest: all checks passed");
}

// --aad-verify-url / --disable-local-auth: a second launcher whose Entra ID tokens are checked
// against a verification server that knows one valid token.
async function authChecks() {
  const verifier = http.createServer((req, res) => {
    const u = new URL(req.url, "http://x");
    const ok = u.searchParams.get("token") === "good-token" && u.searchParams.get("resource") === "https://cosmos.azure.com";
    res.writeHead(ok ? 200 : 401).end();
  });
  await new Promise(r => verifier.listen(0, "127.0.0.1", r));
  const verifyUrl = `http://127.0.0.1:${verifier.address().port}/verify`;
  const child = spawn(process.execPath, [path.join(__dirname, "launcher.js"), "--port", "0", "--aad-verify-url", verifyUrl], { stdio: ["ignore", "pipe", "inherit"] });
  base = await new Promise((resolve, reject) => {
    child.stdout.on("data", d => {
      const m = /^cosmos-local listening on (http:\/\/127\.0\.0\.1:\d+)$/m.exec(String(d));
      if (m) resolve(m[1]);
    });
    child.on("exit", code => reject(new Error(`launcher exited ${code}`)));
  });
  const aad = token => ({ authorization: encodeURIComponent(`type=aad&ver=1.0&sig=${token}`) });
  // Keys still work until local auth is disabled: they create the database and container.
  let r = await call("POST", "/dbs", { body: { id: "authdb" } });
  assert.strictEqual(r.status, 201);
  r = await call("POST", "/dbs/authdb/colls", { body: { id: "c", partitionKey: { paths: ["/state"], kind: "Hash", version: 2 } } });
  assert.strictEqual(r.status, 201);
  r = await call("POST", "/dbs/authdb/colls/c/docs", { headers: { ...pk("Texas"), ...aad("good-token") }, body: { id: "austin", state: "Texas" } });
  show("AAD upsert with a valid token", r);
  assert.strictEqual(r.status, 201);
  r = await call("GET", "/dbs/authdb/colls/c/docs/austin", { headers: { ...pk("Texas"), ...aad("stale-token") } });
  show("AAD read with an unknown token", r);
  assert.strictEqual(r.status, 401);
  r = await call("POST", "/dbs", { headers: aad("good-token"), body: { id: "other" } });
  show("AAD create database", r);
  assert.strictEqual(r.status, 403);
  assert.strictEqual(r.headers["x-ms-substatus"], "5300");
  r = await call("POST", "/_test/auth", { body: { disableLocalAuth: true } });
  assert.deepStrictEqual(r.body, { disableLocalAuth: true });
  r = await call("GET", "/dbs/authdb/colls/c/docs/austin", { headers: pk("Texas") });
  show("master key with local auth disabled", r);
  assert.strictEqual(r.status, 403);
  assert.match(r.body.message, /Local Authorization is disabled/);
  r = await call("GET", "/dbs/authdb/colls/c/docs/austin", { headers: { ...pk("Texas"), ...aad("good-token") } });
  assert.strictEqual(r.status, 200);
  assert.strictEqual(r.body.id, "austin");
  r = await call("GET", "/_test/auth");
  assert.deepStrictEqual(r.body, { disableLocalAuth: true, aad: true, aadAccepted: 2, aadRefused: 1, masterAccepted: 2, masterRefused: 1, controlPlaneRefused: 1 });
  const exit = new Promise(resolve => child.on("exit", code => resolve(code)));
  agent.destroy();
  child.kill("SIGTERM");
  assert.strictEqual(await exit, 0);
  verifier.close();
  console.log("auth checks (Entra ID tokens, disableLocalAuth) passed");
}

main().catch(err => {
  console.error(err);
  process.exit(1);
});
