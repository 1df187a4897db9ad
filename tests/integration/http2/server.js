// An h2c server (HTTP/2 with prior knowledge): 200 to every stream. Its sessions time out
// after SESSION_TIMEOUT_MS idle: Node then sends GOAWAY and closes the connection.
const http2 = require('http2');

const port = Number(process.env.PORT);
const server = http2.createServer();
server.setTimeout(Number(process.env.SESSION_TIMEOUT_MS));
server.on('stream', (stream) => {
  stream.respond({ ':status': 200 });
  stream.end('ok\n');
});
server.listen(port, process.env.HOST, () => console.log('listening'));
