// An ALB's health checks of a GRPC target group: every INTERVAL_MS (argument) a gRPC call of
// /AWS.ALB/healthcheck (the ALB's default path) with User-Agent ELB-HealthChecker/2.0, each on a
// new connection closed once answered, until SIGTERM. The server does not implement the method:
// it answers UNIMPLEMENTED (12), which the ALB's default success codes accept. Prints one JSON
// line at the end: each check's gRPC status.
const grpc = require('@grpc/grpc-js');

const [host, port, intervalMs] = [process.argv[2], process.argv[3], Number(process.argv[4])];
const Client = grpc.makeGenericClientConstructor({
  check: {
    path: '/AWS.ALB/healthcheck', requestStream: false, responseStream: false,
    requestSerialize: (b) => b, requestDeserialize: (b) => b,
    responseSerialize: (b) => b, responseDeserialize: (b) => b,
  },
});
const codes = [];
let stopping = false;

function check() {
  // A channel of its own: grpc-js would otherwise keep one connection for every check.
  const client = new Client(`${host}:${port}`, grpc.credentials.createInsecure(), {
    'grpc.primary_user_agent': 'ELB-HealthChecker/2.0',
    'grpc.enable_retries': 0,
  });
  return new Promise((resolve) => {
    client.check(Buffer.alloc(0), (error) => {
      codes.push(error ? error.code : grpc.status.OK);
      client.close();
      resolve();
    });
  });
}

process.on('SIGTERM', () => { stopping = true; });
(async () => {
  while (!stopping) {
    await check();
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
  console.log(JSON.stringify({ codes }));
})();
