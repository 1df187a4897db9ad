// An HTTP/2 client that keeps its connection: one session, COUNT streams one after another (each
// answered before the next), then one JSON line (its local port, the streams answered), and the
// session stays open until standard input closes.
const http2 = require('http2');

const [host, port, count] = [process.argv[2], process.argv[3], Number(process.argv[4])];
const session = http2.connect(`http://${host}:${port}`);

function exchange(number) {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ':path': `/open/${number}` });
    stream.on('response', () => {});
    stream.on('data', () => {});
    stream.on('error', reject);
    stream.on('close', resolve);
    stream.end();
  });
}

session.on('error', (error) => { console.error(error.message); process.exit(1); });
session.on('connect', async () => {
  for (let number = 0; number < count; number++) await exchange(number);
  console.log(JSON.stringify({ port: session.socket.localPort, streams: count }));
  process.stdin.resume();
  process.stdin.on('end', () => session.close());
});
