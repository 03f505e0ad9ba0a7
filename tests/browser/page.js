// The page of tests/browser.rs, run by headless Chromium. Served from one origin (the page
// server), it calls the gateway on another (`api` in the query), so every call is cross-origin:
// Chromium sends the preflights and enforces the `Access-Control-*` answers.
//
// `role=allowed`: the page's origin is in the gateway's `cors.allow_origins`; every call must
// work. `role=denied`: it is not; every call must fail in the browser, and the page catches it.
//
// The official gRPC-Web client (npm `grpc-web`) and `google-protobuf` are loaded from their npm
// files with a tiny CommonJS shim (no bundler); messages are written and read by hand with
// google-protobuf's BinaryWriter and BinaryReader (no protoc plugin), like tests/grpc_web/client.js.
// The results go to `window.results` (and the page's <pre>); `window.done` says when they are all in.
'use strict';

window.results = {};
window.done = false;

const params = new URLSearchParams(location.search);
const API = params.get('api');
const ROLE = params.get('role');

// Runs a CommonJS file: `module.exports` of the script at `url`.
async function requireUrl(url) {
  const src = await (await fetch(url)).text();
  const module = { exports: {} };
  new Function('exports', 'module', src)(module.exports, module);
  return module.exports;
}

// Rejects after `ms`, so that a call that never settles still ends the page.
function withTimeout(promise, ms, what) {
  return Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error('timed out: ' + what)), ms)),
  ]);
}

function errorInfo(e) {
  return { name: e && e.name, message: String(e && e.message), code: e && e.code };
}

let jspb;
let grpcWeb;

// --- shop.v1 messages, by hand ---

function getItemRequest(shelf, id) {
  return {
    serializeBinary() {
      const w = new jspb.BinaryWriter();
      if (shelf) w.writeString(1, shelf);
      if (id) w.writeInt64(2, id);
      return w.getResultBuffer();
    },
  };
}

function watchItemsRequest(shelf, count, failCode) {
  return {
    serializeBinary() {
      const w = new jspb.BinaryWriter();
      if (shelf) w.writeString(1, shelf);
      if (count) w.writeInt32(2, count);
      if (failCode) w.writeInt32(4, failCode);
      return w.getResultBuffer();
    },
  };
}

// Item: the fields the test checks (id, name, price, tags, kind, created, shelf).
function readItem(reader) {
  const item = { id: '0', name: '', price: null, tags: [], kind: 0, created: null, shelf: '' };
  while (reader.nextField()) {
    if (reader.isEndGroup()) break;
    switch (reader.getFieldNumber()) {
      case 1: item.id = reader.readInt64String(); break;
      case 2: item.name = reader.readString(); break;
      case 3: {
        const price = { currency: '', units: '0', nanos: 0 };
        reader.readMessage(price, (m, r) => {
          while (r.nextField()) {
            if (r.isEndGroup()) break;
            switch (r.getFieldNumber()) {
              case 1: m.currency = r.readString(); break;
              case 2: m.units = r.readInt64String(); break;
              case 3: m.nanos = r.readInt32(); break;
              default: r.skipField();
            }
          }
        });
        item.price = price;
        break;
      }
      case 4: item.tags.push(reader.readString()); break;
      case 5: item.kind = reader.readEnum(); break;
      case 6: {
        const ts = { seconds: '0' };
        reader.readMessage(ts, (m, r) => {
          while (r.nextField()) {
            if (r.isEndGroup()) break;
            if (r.getFieldNumber() === 1) m.seconds = r.readInt64String();
            else r.skipField();
          }
        });
        item.created = ts;
        break;
      }
      case 7: item.shelf = reader.readString(); break;
      default: reader.skipField();
    }
  }
  return item;
}

const Item = { deserializeBinary: (bytes) => readItem(new jspb.BinaryReader(bytes)) };

function descriptor(name, type) {
  return new grpcWeb.MethodDescriptor(
    '/shop.v1.Shop/' + name,
    type,
    Object,
    Item,
    (req) => req.serializeBinary(),
    Item.deserializeBinary,
  );
}

// --- the official client ---

// A unary call: its message (or error) from the callback and its status from the 'status' event.
function unary(format, id, metadata) {
  return new Promise((resolve) => {
    const client = new grpcWeb.GrpcWebClientBase({ format });
    const out = { message: null, error: null, status: null };
    let called = false;
    const finish = () => {
      if (called && (out.status || out.error)) resolve(out);
    };
    const call = client.rpcCall(
      API + '/shop.v1.Shop/GetItem',
      getItemRequest('north', id),
      metadata || {},
      descriptor('GetItem', grpcWeb.MethodType.UNARY),
      (err, resp) => {
        called = true;
        if (err) out.error = { code: err.code, message: err.message };
        else out.message = resp;
        finish();
      },
    );
    call.on('status', (s) => {
      out.status = { code: s.code, details: s.details };
      finish();
    });
  });
}

// A server-streaming call: every message in order, the final status, the error if any.
function watch(format, count, failCode) {
  return new Promise((resolve) => {
    const client = new grpcWeb.GrpcWebClientBase({ format });
    const out = { messages: [], status: null, error: null, ended: false };
    const stream = client.serverStreaming(
      API + '/shop.v1.Shop/WatchItems',
      watchItemsRequest('south', count, failCode),
      {},
      descriptor('WatchItems', grpcWeb.MethodType.SERVER_STREAMING),
    );
    stream.on('data', (m) => out.messages.push(m));
    stream.on('status', (s) => {
      out.status = { code: s.code, details: s.details };
    });
    stream.on('error', (e) => {
      out.error = { code: e.code, message: e.message };
      resolve(out);
    });
    stream.on('end', () => {
      out.ended = true;
      resolve(out);
    });
  });
}

// --- gRPC-Web binary with fetch: the frames and the trailer frame read here ---

function frame(bytes) {
  const out = new Uint8Array(5 + bytes.length);
  new DataView(out.buffer).setUint32(1, bytes.length);
  out.set(bytes, 5);
  return out;
}

async function fetchBinary(method, req) {
  const resp = await fetch(API + '/shop.v1.Shop/' + method, {
    method: 'POST',
    headers: { 'content-type': 'application/grpc-web+proto', 'x-grpc-web': '1' },
    body: frame(req.serializeBinary()),
  });
  const body = new Uint8Array(await resp.arrayBuffer());
  const out = {
    http: resp.status,
    contentType: resp.headers.get('content-type'),
    // Readable only when exposed through Access-Control-Expose-Headers.
    headerStatus: resp.headers.get('grpc-status'),
    headerMessage: resp.headers.get('grpc-message'),
    messages: [],
    trailers: null,
    frames: [],
  };
  let at = 0;
  while (at + 5 <= body.length) {
    const flag = body[at];
    const len = new DataView(body.buffer, body.byteOffset + at + 1, 4).getUint32(0);
    const payload = body.subarray(at + 5, at + 5 + len);
    out.frames.push(flag);
    if (flag & 0x80) {
      out.trailers = {};
      for (const line of new TextDecoder().decode(payload).split('\r\n')) {
        const i = line.indexOf(':');
        if (i > 0) out.trailers[line.slice(0, i).trim()] = line.slice(i + 1).trim();
      }
    } else {
      out.messages.push(Item.deserializeBinary(payload));
    }
    at += 5 + len;
  }
  out.leftover = body.length - at;
  return out;
}

// --- transcoded REST and SSE ---

async function fetchJson(path, init) {
  const resp = await fetch(API + path, init);
  return {
    http: resp.status,
    contentType: resp.headers.get('content-type'),
    body: await resp.json(),
  };
}

// Reads a transcoded server stream with EventSource until the stream ends (the first error event
// without data: the server closed; EventSource would reconnect, so the page closes it).
function sse(path) {
  return new Promise((resolve) => {
    const out = { messages: [], errorEvents: [], opened: false, readyStateAtEnd: null };
    const es = new EventSource(API + path);
    es.onopen = () => {
      out.opened = true;
    };
    es.onmessage = (e) => out.messages.push(JSON.parse(e.data));
    es.addEventListener('error', (e) => {
      if (e.data) {
        // `event: error` sent by the gateway: the stream's gRPC status as a problem.
        out.errorEvents.push(JSON.parse(e.data));
        return;
      }
      out.readyStateAtEnd = es.readyState;
      es.close();
      resolve(out);
    });
  });
}

// --- the runs ---

async function step(name, fn) {
  try {
    window.results[name] = { ok: true, value: await withTimeout(fn(), 15000, name) };
  } catch (e) {
    window.results[name] = { ok: false, error: errorInfo(e) };
  }
}

async function allowed() {
  const { StatusCode, MethodType } = grpcWeb;
  window.results.constants = { NOT_FOUND: StatusCode.NOT_FOUND, UNARY: MethodType.UNARY };
  // 1. text unary, with a deadline: the client sends it as `grpc-timeout`, so the preflight asks
  // for that header too.
  await step('textUnary', () => unary('text', 7, { deadline: String(Date.now() + 30000) }));
  // 2. text server streaming.
  await step('textStream', () => watch('text', 3));
  // A stream that fails after its messages: the status is in the trailer frame.
  await step('textStreamFails', () => watch('text', 2, 9));
  // 3. binary unary, by the official client and by fetch.
  await step('binaryUnary', () => unary('binary', 8));
  await step('binaryFetch', () => fetchBinary('GetItem', getItemRequest('east', 9)));
  await step('binaryFetchStream', () => fetchBinary('WatchItems', watchItemsRequest('west', 3)));
  // 4. transcoded REST (a simple GET, and a POST with JSON that needs a preflight) and SSE.
  await step('restGet', () => fetchJson('/v1/items/7'));
  await step('restPost', () =>
    fetchJson('/v1/shelves/north/items', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'pen' }),
    }),
  );
  await step('sse', () => sse('/v1/shelves/a/watch?count=3'));
  await step('sseFails', () => sse('/v1/shelves/a/watch?count=1&fail_code=9'));
  // 5. error statuses readable by the page.
  await step('textNotFound', () => unary('text', 404));
  await step('binaryFetchNotFound', () => fetchBinary('GetItem', getItemRequest('east', 404)));
  await step('restNotFound', () => fetchJson('/v1/items/404'));
}

// 6. The same calls from an origin the gateway's `cors` does not allow: the browser refuses them.
async function denied() {
  await step('textUnary', () => unary('text', 7));
  await step('binaryFetch', () => fetchBinary('GetItem', getItemRequest('east', 9)));
  await step('restGet', () => fetchJson('/v1/items/7'));
  await step('sse', () => sse('/v1/shelves/a/watch?count=3'));
}

(async () => {
  try {
    jspb = await requireUrl('/node_modules/google-protobuf/google-protobuf.js');
    grpcWeb = await requireUrl('/node_modules/grpc-web/index.js');
    window.results.origin = location.origin;
    window.results.role = ROLE;
    if (ROLE === 'allowed') await allowed();
    else if (ROLE === 'denied') await denied();
    else throw new Error('unknown role ' + ROLE);
  } catch (e) {
    window.results.fatal = errorInfo(e);
  }
  document.getElementById('results').textContent = JSON.stringify(window.results, null, 2);
  window.done = true;
})();
