// The official gRPC-Web client (npm `grpc-web`) calling grpc.health.v1.Health through the
// gateway, for tests/grpc_web.rs. No protoc plugin: the two messages are written and read with
// google-protobuf's binary reader and writer, and the stub is GrpcWebClientBase with
// hand-made MethodDescriptors. Node has no XMLHttpRequest: `xmlhttprequest` provides one that, unlike `xhr2`, updates
// `responseText` and fires `readystatechange` on every chunk, which server streaming needs.
//
// Usage: node client.js BASE_URL check|watch SERVICE [text|binary]
// Prints one JSON object per line: {"event":"data","status":N} per message,
// {"event":"status","code":N,"details":"..."} for the final status (unary calls print it too),
// {"event":"error","code":N,"message":"..."} when the call fails, {"event":"end"} last.
'use strict';

global.XMLHttpRequest = require('xmlhttprequest').XMLHttpRequest;
const { BinaryReader, BinaryWriter } = require('google-protobuf');
const { GrpcWebClientBase, MethodDescriptor, MethodType } = require('grpc-web');

const [base, method, service, format = 'text'] = process.argv.slice(2);

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// HealthCheckRequest { string service = 1; }
class HealthCheckRequest {
  constructor(service) {
    this.service = service;
  }
  serializeBinary() {
    const w = new BinaryWriter();
    if (this.service) w.writeString(1, this.service);
    return w.getResultBuffer();
  }
}

// HealthCheckResponse { ServingStatus status = 1; }
class HealthCheckResponse {
  static deserializeBinary(bytes) {
    const r = new BinaryReader(bytes);
    const msg = new HealthCheckResponse();
    msg.status = 0;
    while (r.nextField()) {
      if (r.isEndGroup()) break;
      if (r.getFieldNumber() === 1) msg.status = r.readEnum();
      else r.skipField();
    }
    return msg;
  }
}

const descriptor = (name, type) =>
  new MethodDescriptor(
    '/grpc.health.v1.Health/' + name,
    type,
    HealthCheckRequest,
    HealthCheckResponse,
    (req) => req.serializeBinary(),
    HealthCheckResponse.deserializeBinary,
  );

const client = new GrpcWebClientBase({ format });
const req = new HealthCheckRequest(service);

if (method === 'check') {
  const call = client.rpcCall(
    base + '/grpc.health.v1.Health/Check',
    req,
    {},
    descriptor('Check', MethodType.UNARY),
    (err, resp) => {
      if (err) out({ event: 'error', code: err.code, message: err.message });
      else out({ event: 'data', status: resp.status });
    },
  );
  call.on('status', (s) => out({ event: 'status', code: s.code, details: s.details }));
  call.on('end', () => out({ event: 'end' }));
} else if (method === 'watch') {
  const stream = client.serverStreaming(
    base + '/grpc.health.v1.Health/Watch',
    req,
    {},
    descriptor('Watch', MethodType.SERVER_STREAMING),
  );
  stream.on('data', (resp) => out({ event: 'data', status: resp.status }));
  stream.on('status', (s) => out({ event: 'status', code: s.code, details: s.details }));
  stream.on('error', (err) => out({ event: 'error', code: err.code, message: err.message }));
  stream.on('end', () => out({ event: 'end' }));
} else {
  console.error('usage: node client.js BASE_URL check|watch SERVICE [text|binary]');
  process.exit(2);
}
