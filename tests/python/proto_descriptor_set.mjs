// Prints the FileDescriptorSet of proto/grpc_service.proto (and what it imports), base64-encoded,
// read with protobufjs as the server reads it: the gRPC fuzzer builds its messages from this.
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const protobuf = require('protobufjs');
const { FileDescriptorSet } = require('protobufjs/ext/descriptor');

const protoDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../proto');
const root = new protobuf.Root();
root.resolvePath = (_origin, target) => path.join(protoDir, path.basename(target));
root.loadSync('grpc_service.proto', { keepCase: true });
root.resolveAll();
process.stdout.write(Buffer.from(FileDescriptorSet.encode(root.toDescriptor('proto3')).finish()).toString('base64'));
