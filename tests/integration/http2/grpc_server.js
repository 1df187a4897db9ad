// A grpc-js server over h2c with one unary method, /shop.Orders/Pay, answering every call with
// its request bytes (a plain serializer: no protobuf needed). Its connection limits come from
// the environment: MAX_CONNECTION_IDLE_MS (grpc.max_connection_idle_ms), MAX_CONNECTION_AGE_MS
// and MAX_CONNECTION_AGE_GRACE_MS (grpc.max_connection_age_ms, _grace_ms); unset: grpc-js's.
const grpc = require('@grpc/grpc-js');

const bytes = (buffer) => buffer;
const service = {
  pay: {
    path: '/shop.Orders/Pay', requestStream: false, responseStream: false,
    requestSerialize: bytes, requestDeserialize: bytes,
    responseSerialize: bytes, responseDeserialize: bytes,
  },
};
const limits = {
  MAX_CONNECTION_IDLE_MS: 'grpc.max_connection_idle_ms',
  MAX_CONNECTION_AGE_MS: 'grpc.max_connection_age_ms',
  MAX_CONNECTION_AGE_GRACE_MS: 'grpc.max_connection_age_grace_ms',
};
const options = {};
for (const [variable, option] of Object.entries(limits)) {
  if (process.env[variable]) options[option] = Number(process.env[variable]);
}

const server = new grpc.Server(options);
server.addService(service, { pay: (call, callback) => callback(null, call.request) });
server.bindAsync(`${process.env.HOST}:${process.env.PORT}`, grpc.ServerCredentials.createInsecure(),
  (error) => {
    if (error) throw error;
    console.log('listening');
  });
process.on('SIGTERM', () => server.forceShutdown());
