// A busy balancer, stretched: stop reading an HTTP/2 session's connection, so what the backend
// sends meanwhile (its GOAWAY) waits unread while the balancer opens a stream, then read again.
// The net.Socket under the session (its public proxy refuses pause and resume).
function rawSocket(session) {
  const symbol = Object.getOwnPropertySymbols(session).find((s) => s.description === 'socket');
  return session[symbol];
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Stops reading `session`, waits `idleMs`, calls `open` (which returns a promise), lets its
// HEADERS leave before the waiting bytes are read, reads again and returns what `open` returned.
async function openWhileNotReading(session, idleMs, open) {
  const socket = rawSocket(session);
  socket._handle.readStop();
  await sleep(idleMs);
  const late = open();
  await sleep(200);
  socket._handle.readStart();
  return late;
}

module.exports = { openWhileNotReading, sleep };
