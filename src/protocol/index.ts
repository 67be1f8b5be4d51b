export {
  BinarySectionReader, elementCount, joinBytesElements, parseHeaderLength, shapeString,
  splitBytesElements, splitInferBody, tensorBytesProblem,
} from './binary-tensor.js';
export {
  decodeJsonTensorData, encodeJsonTensorData, isBinaryOnly, type JsonElement,
} from './json-tensor.js';
export * from './http/index.js';
