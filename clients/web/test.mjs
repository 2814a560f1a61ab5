// End-to-end check of the gateway as a browser would use it: CORS preflight, then gRPC-Web
// (binary and text) through the same libraries a web front end uses. Needs a running stack and
// `npm run generate` first. Exits non-zero with a message on the first failed check.
import { randomUUID } from "node:crypto";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { CallEventType, CallStatus, Calls } from "./gen/cco/infinity/gateway/v1/calls_pb.js";

const GATEWAY_URL = (process.env.GATEWAY_URL ?? "").replace(/\/+$/, "");
const TOKEN = process.env.TOKEN ?? "";
const TENANT = process.env.TENANT || "demo";
const COLLECTOR = process.env.COLLECTOR || "alice";
const OTHER_COLLECTOR = process.env.OTHER_COLLECTOR || "bob";
const ORIGIN = process.env.ORIGIN || "http://localhost:5173";
const EVIL_ORIGIN = "http://evil.example";
const ALG_NONE_TOKEN = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.";
const WATCH_TIMEOUT_MS = 60_000;
// Every unary call and plain fetch gets a deadline so a stuck server fails the run, never hangs it.
const CALL_TIMEOUT_MS = 15_000;

if (!GATEWAY_URL || !TOKEN) {
  console.error("usage: GATEWAY_URL=http://127.0.0.1:50052 TOKEN=<jwt of alice@demo> npm test");
  process.exit(2);
}

// Runs one check; the first failure ends the run with a clear message and exit code 1.
async function step(name, fn) {
  try {
    const detail = await fn();
    console.log(`ok   ${name}${detail ? ` (${detail})` : ""}`);
  } catch (err) {
    console.error(`FAIL ${name}: ${describe(err)}`);
    process.exit(1);
  }
}

function describe(err) {
  if (err instanceof ConnectError) return `ConnectError ${Code[err.code]}: ${err.rawMessage}`;
  // fetch wraps connection errors (ECONNREFUSED, ...) in a TypeError whose cause says what happened.
  if (err?.cause) {
    return `${err.message} (${err.cause.code ?? err.cause.message ?? err.cause}); is the gateway up at ${GATEWAY_URL}?`;
  }
  return `${err?.message ?? err}`;
}

function check(cond, message) {
  if (!cond) throw new Error(message);
}

// A transport is per credential: the interceptor adds the bearer token to every request.
function transport(token) {
  const interceptors = token
    ? [(next) => (req) => { req.header.set("authorization", `Bearer ${token}`); return next(req); }]
    : [];
  return createGrpcWebTransport({ baseUrl: GATEWAY_URL, useBinaryFormat: true, interceptors });
}

// One unary call in grpc-web-text (base64 bodies, what the official grpc-web JS client uses by
// default). connect-web cannot send it: its useBinaryFormat: false means grpc-web+json, which
// tonic-web refuses with HTTP 405. So the frames are built by hand from the generated descriptor.
async function grpcWebTextUnary(method, message, token) {
  const payload = toBinary(method.input, create(method.input, message));
  const frame = new Uint8Array(5 + payload.length); // flag 0 (data), big-endian length, message
  new DataView(frame.buffer).setUint32(1, payload.length);
  frame.set(payload, 5);
  const res = await fetch(`${GATEWAY_URL}/${method.parent.typeName}/${method.name}`, {
    method: "POST",
    headers: {
      "content-type": "application/grpc-web-text",
      accept: "application/grpc-web-text",
      "x-grpc-web": "1",
      authorization: `Bearer ${token}`,
      origin: ORIGIN,
    },
    body: Buffer.from(frame).toString("base64"),
    signal: AbortSignal.timeout(CALL_TIMEOUT_MS),
  });
  check(res.ok, `HTTP ${res.status} ${res.statusText}`);
  const type = res.headers.get("content-type") ?? "";
  check(type.startsWith("application/grpc-web-text"), `response content-type is ${JSON.stringify(type)}`);
  // The server may encode each chunk on its own, so "=" padding can occur mid-body.
  const text = (await res.text()).replace(/\s/g, "");
  const body = Buffer.concat((text.match(/[^=]+=*/g) ?? []).map((part) => Buffer.from(part, "base64")));
  // An error may come as headers only; otherwise the last frame (flag 0x80) holds the trailers.
  let status = res.headers.get("grpc-status");
  let statusMessage = res.headers.get("grpc-message") ?? "";
  let reply;
  for (let i = 0; i < body.length;) {
    check(i + 5 <= body.length, "truncated grpc-web frame header");
    const len = body.readUInt32BE(i + 1);
    check(i + 5 + len <= body.length, "truncated grpc-web frame");
    const data = body.subarray(i + 5, i + 5 + len);
    if (body[i] & 0x80) {
      for (const line of data.toString().split("\r\n")) {
        const at = line.indexOf(":");
        const key = line.slice(0, at).trim().toLowerCase();
        if (key === "grpc-status") status = line.slice(at + 1).trim();
        if (key === "grpc-message") statusMessage = line.slice(at + 1).trim();
      }
    } else {
      reply = fromBinary(method.output, data);
    }
    i += 5 + len;
  }
  check(status !== null, "no grpc-status in the response");
  if (status !== "0") throw new ConnectError(decodeURIComponent(statusMessage), Number(status));
  check(reply, "grpc-status 0 but no message");
  return reply;
}

// Expects the call to be refused with `code`; anything else (success, other code) is a failure.
async function expectCode(code, call) {
  try {
    await call();
  } catch (err) {
    const e = ConnectError.from(err);
    check(e.code === code, `expected ${Code[code]}, got ${Code[e.code]}: ${e.rawMessage}`);
    return `${Code[code]}: ${e.rawMessage}`;
  }
  throw new Error(`expected ${Code[code]}, but the call succeeded`);
}

const list = (value) => (value ?? "").split(",").map((s) => s.trim().toLowerCase()).filter(Boolean);

function preflight(origin) {
  return fetch(`${GATEWAY_URL}/cco.infinity.gateway.v1.Calls/MakeCall`, {
    method: "OPTIONS",
    headers: {
      Origin: origin,
      "Access-Control-Request-Method": "POST",
      "Access-Control-Request-Headers": "authorization,content-type,x-grpc-web,x-user-agent,grpc-timeout",
    },
    signal: AbortSignal.timeout(CALL_TIMEOUT_MS),
  });
}

// a. CORS: without these headers a browser never sends the call or cannot read grpc-status.
await step(`CORS preflight from ${ORIGIN} is allowed`, async () => {
  const res = await preflight(ORIGIN);
  check(res.ok, `status ${res.status}, expected 2xx`);
  const h = res.headers;
  check(h.get("access-control-allow-origin") === ORIGIN,
    `access-control-allow-origin is ${JSON.stringify(h.get("access-control-allow-origin"))}, expected ${ORIGIN}`);
  const allowed = list(h.get("access-control-allow-headers"));
  for (const name of ["authorization", "content-type", "x-grpc-web", "x-user-agent", "grpc-timeout"]) {
    check(allowed.includes(name), `access-control-allow-headers lacks ${name}: ${JSON.stringify(allowed)}`);
  }
  return `status ${res.status}`;
});

// The actual response (not the preflight) is where a browser learns which headers a script may
// read: grpc-status and grpc-message must be among them, or every error looks like success.
await step(`a gRPC-Web response to ${ORIGIN} exposes grpc-status and grpc-message`, async () => {
  const res = await fetch(`${GATEWAY_URL}/cco.infinity.gateway.v1.Calls/GetCall`, {
    method: "POST",
    headers: {
      Origin: ORIGIN,
      "content-type": "application/grpc-web+proto",
      "x-grpc-web": "1",
      authorization: `Bearer ${TOKEN}`,
    },
    // One empty message frame: GetCall without a tenant, answered INVALID_ARGUMENT.
    body: new Uint8Array([0, 0, 0, 0, 0]),
    signal: AbortSignal.timeout(CALL_TIMEOUT_MS),
  });
  await res.arrayBuffer();
  const h = res.headers;
  check(h.get("access-control-allow-origin") === ORIGIN,
    `access-control-allow-origin is ${JSON.stringify(h.get("access-control-allow-origin"))}, expected ${ORIGIN}`);
  const exposed = list(h.get("access-control-expose-headers"));
  for (const name of ["grpc-status", "grpc-message"]) {
    check(exposed.includes(name), `access-control-expose-headers lacks ${name}: ${JSON.stringify(exposed)}`);
  }
  check(h.get("grpc-status") === "3", `grpc-status ${JSON.stringify(h.get("grpc-status"))}, expected 3 (INVALID_ARGUMENT)`);
  return `grpc-status ${h.get("grpc-status")}`;
});

await step(`CORS preflight from ${EVIL_ORIGIN} is not allowed`, async () => {
  const res = await preflight(EVIL_ORIGIN);
  const acao = res.headers.get("access-control-allow-origin");
  // "*" would let any page read the responses, so it counts as allowing the origin too.
  check(acao !== EVIL_ORIGIN && acao !== "*", `access-control-allow-origin is ${JSON.stringify(acao)}`);
  return `status ${res.status}, allow-origin ${JSON.stringify(acao)}`;
});

const client = createClient(Calls, transport(TOKEN));
let callId;
let completed;

// b. A call placed by the collector themselves.
await step(`MakeCall as ${COLLECTOR} (grpc-web binary)`, async () => {
  const res = await client.makeCall({
    tenantId: TENANT,
    collectorId: COLLECTOR,
    caseId: `web-case-${randomUUID().slice(0, 8)}`,
    destinationNumber: "13900139000",
    idempotencyKey: randomUUID(),
  }, { timeoutMs: CALL_TIMEOUT_MS });
  check(res.callId, `no callId in the response: ${JSON.stringify(res)}`);
  // A refusal would never reach COMPLETED; say why now instead of waiting out the watch.
  check(res.status !== CallStatus.FAILED,
    `call ${res.callId} FAILED: ${res.infinityCode} ${res.infinityMessage}`);
  callId = res.callId;
  return `callId ${callId}, status ${CallStatus[res.status]}`;
});

// c. The server stream must replay the call's life in order and end in COMPLETED.
await step("WatchCalls streams CREATED ... RINGING ... COMPLETED", async () => {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), WATCH_TIMEOUT_MS);
  const events = [];
  try {
    for await (const ev of client.watchCalls({ tenantId: TENANT, callId, fromStart: true }, { signal: ctl.signal })) {
      check(ev.callId === callId, `event ${ev.eventId} is for call ${ev.callId}, expected ${callId}`);
      const prev = events.at(-1);
      // uint64 is a bigint in protobuf-es v2, so this compares exactly.
      check(!prev || ev.eventId > prev.eventId, `event id ${ev.eventId} does not follow ${prev?.eventId}`);
      events.push(ev);
      if (ev.type === CallEventType.FAILED || ev.type === CallEventType.EXPIRED) {
        throw new Error(`call ended ${CallEventType[ev.type]}: ${ev.errorCode} ${ev.errorMessage}`);
      }
      if (ev.type === CallEventType.COMPLETED) break; // leaving the loop cancels the stream
    }
  } catch (err) {
    if (ctl.signal.aborted) {
      throw new Error(`no COMPLETED event within ${WATCH_TIMEOUT_MS / 1000} s; saw ${types(events)}`);
    }
    throw err;
  } finally {
    clearTimeout(timer);
    ctl.abort(); // in case the stream is still open on an early exit
  }
  const seen = types(events);
  check(events.length > 0, "the stream ended without any event");
  check(events[0].type === CallEventType.CREATED, `first event is not CREATED: ${seen}`);
  check(events.at(-1).type === CallEventType.COMPLETED, `stream ended before COMPLETED: ${seen}`);
  check(events.some((ev) => ev.type === CallEventType.RINGING), `no RINGING before COMPLETED: ${seen}`);
  completed = events.at(-1);
  return `${seen}; talkSeconds ${completed.talkSeconds}`;
});

function types(events) {
  return events.map((ev) => `${ev.eventId}:${CallEventType[ev.type]}`).join(" ") || "nothing";
}

// d. The same record through the other wire format a browser client may use.
await step("GetCall agrees with the COMPLETED event (grpc-web-text)", async () => {
  const rec = await grpcWebTextUnary(Calls.method.getCall, { tenantId: TENANT, callId }, TOKEN);
  check(rec.status === CallStatus.COMPLETED, `status is ${CallStatus[rec.status]}, expected COMPLETED`);
  check(rec.talkSeconds === completed.talkSeconds,
    `talkSeconds ${rec.talkSeconds}, but the COMPLETED event said ${completed.talkSeconds}`);
  return `talkSeconds ${rec.talkSeconds}`;
});

// e. Refusals: a collector acts only as themselves, and only a valid signed token gets in.
await step(`MakeCall as ${OTHER_COLLECTOR} with ${COLLECTOR}'s token is PermissionDenied`, () =>
  expectCode(Code.PermissionDenied, () => client.makeCall({
    tenantId: TENANT,
    collectorId: OTHER_COLLECTOR,
    caseId: `web-case-${randomUUID().slice(0, 8)}`,
    destinationNumber: "13900139000",
    idempotencyKey: randomUUID(),
  }, { timeoutMs: CALL_TIMEOUT_MS })));

await step("a call without authorization is Unauthenticated", () =>
  expectCode(Code.Unauthenticated, () =>
    createClient(Calls, transport(null)).getCall({ tenantId: TENANT, callId }, { timeoutMs: CALL_TIMEOUT_MS })));

await step('a token with alg "none" is Unauthenticated', () =>
  expectCode(Code.Unauthenticated, () =>
    createClient(Calls, transport(ALG_NONE_TOKEN)).getCall({ tenantId: TENANT, callId }, { timeoutMs: CALL_TIMEOUT_MS })));

console.log("web client: all checks passed");
