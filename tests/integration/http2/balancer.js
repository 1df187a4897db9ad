// A balancer's HTTP/2 client: one session to the backend, a first stream, then a second one
// after IDLE_MS. With "pause", it stops reading the connection once the first is answered (a
// busy balancer that has not processed what the backend sent since, its GOAWAY) and opens the
// second stream before reading again. Prints one JSON line: each stream's id and what became of it.
const http2 = require('http2');
const { openWhileNotReading, sleep } = require('./paused_read');

const [host, port, idleMs, pause] =
  [process.argv[2], process.argv[3], Number(process.argv[4]), process.argv[5] === 'pause'];
const session = http2.connect(`http://${host}:${port}`);
const streams = [];

function open(path) {
  return new Promise((resolve) => {
    const entry = { path, id: null, outcome: 'pending' };
    streams.push(entry);
    const stream = session.request({ ':path': path, ':method': 'POST' });
    stream.on('ready', () => { entry.id = stream.id; });
    stream.on('response', (headers) => { entry.outcome = `status ${headers[':status']}`; });
    stream.on('error', (error) => { entry.outcome = 'error'; entry.error = error.code; });
    stream.on('close', () => {
      entry.id = entry.id ?? stream.id ?? null;
      if (entry.outcome === 'pending' || entry.outcome === 'error') {
        entry.rst_code = stream.rstCode;
        entry.outcome = stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM
          ? 'refused' : 'reset';
      }
      resolve();
    });
    stream.on('data', () => {});
    stream.end('amount=1');
  });
}

session.on('error', () => {});
session.on('connect', async () => {
  await open('/first');
  if (pause) {
    await openWhileNotReading(session, idleMs, () => open('/late'));
  } else {
    await sleep(idleMs);
    await open('/late');
  }
  console.log(JSON.stringify({ streams }));
  session.destroy();
});
