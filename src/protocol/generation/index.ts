export * from './image-generation.js';
export { encodePngImages, encodePngPreview, isImageBatch } from './png-pool.js';
