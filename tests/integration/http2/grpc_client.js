// A balancer's grpc-js client: a first call of /shop.Orders/Pay, then a second one after
// IDLE_MS on the same connection (transparent retries off, so that a call caught by the
// server's GOAWAY fails as the balancer would see it: with them on, grpc-js retries the refused
// stream on a new connection and the call succeeds). With "pause", it stops reading the
// connection once the first call is answered and makes the second before reading again (see
// paused_read.js). HOLD_MS (environment) keeps the connection idle that long after the last
// call before closing it, as a balancer's own idle timeout would; KEEPALIVE_TIME_MS
// (grpc.keepalive_time_ms) makes it ping the server that often, calls or not. Prints one JSON line: each
// HTTP/2 stream the client opened (id, and what became of it) and each call's gRPC status.
const http2 = require('http2');
const { openWhileNotReading, sleep } = require('./paused_read');

// grpc-js opens its sessions with http2.connect: keep them, to watch their streams.
const sessions = [];
const streams = [];
const connect = http2.connect;
http2.connect = (...args) => {
  const session = connect(...args);
  sessions.push(session);
  const request = session.request.bind(session);
  session.request = (...requestArgs) => {
    const stream = request(...requestArgs);
    const entry = { id: null, outcome: 'pending' };
    streams.push(entry);
    stream.on('ready', () => { entry.id = stream.id; });
    stream.on('response', (headers) => { entry.outcome = `status ${headers[':status']}`; });
    stream.on('close', () => {
      entry.id = entry.id ?? stream.id ?? null;
      if (entry.outcome === 'pending') {
        entry.rst_code = stream.rstCode;
        entry.outcome = stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM
          ? 'refused' : 'reset';
      }
    });
    return stream;
  };
  return session;
};
const grpc = require('@grpc/grpc-js');

const [host, port, idleMs, pause] =
  [process.argv[2], process.argv[3], Number(process.argv[4]), process.argv[5] === 'pause'];
const Client = grpc.makeGenericClientConstructor({
  pay: {
    path: '/shop.Orders/Pay', requestStream: false, responseStream: false,
    requestSerialize: (b) => b, requestDeserialize: (b) => b,
    responseSerialize: (b) => b, responseDeserialize: (b) => b,
  },
});
const options = { 'grpc.enable_retries': 0 };
if (process.env.KEEPALIVE_TIME_MS) {
  options['grpc.keepalive_time_ms'] = Number(process.env.KEEPALIVE_TIME_MS);
  options['grpc.keepalive_permit_without_calls'] = 1;
}
const client = new Client(`${host}:${port}`, grpc.credentials.createInsecure(), options);
const calls = [];

function pay() {
  return new Promise((resolve) => {
    client.pay(Buffer.from('amount=1'), (error) => {
      calls.push(error ? { code: error.code, details: error.details } : { code: grpc.status.OK });
      resolve();
    });
  });
}

(async () => {
  await pay();
  if (pause) {
    await openWhileNotReading(sessions[sessions.length - 1], idleMs, pay);
  } else {
    await sleep(idleMs);
    await pay();
  }
  await sleep(Number(process.env.HOLD_MS ?? 100));  // at least the last stream's close event
  console.log(JSON.stringify({ streams, calls }));
  client.close();
})();
