/**
 * JSON schemas of the HTTP request bodies, compiled once by fastify at route registration.
 * Bodies reach these already parsed (see body-parsers.ts); empty bodies arrive as `{}`.
 */
import { KSERVE_DATATYPES } from '../../core/types.js';

/** KServe v2 `$parameters`: scalar values only. */
const parameters = {
  type: 'object',
  additionalProperties: { type: ['string', 'number', 'boolean'] },
} as const;

const inferInput = {
  type: 'object',
  required: ['name', 'shape', 'datatype'],
  properties: {
    name: { type: 'string' },
    shape: { type: 'array', items: { type: 'integer', minimum: 0 } },
    datatype: { type: 'string', enum: KSERVE_DATATYPES },
    parameters,
    data: {},
  },
} as const;

const requestedOutput = {
  type: 'object',
  required: ['name'],
  properties: { name: { type: 'string' }, parameters },
} as const;

/** `$inference_request` (model name and version come from the URL). */
export const inferRequestSchema = {
  type: 'object',
  required: ['inputs'],
  properties: {
    id: { type: 'string' },
    parameters,
    inputs: { type: 'array', items: inferInput },
    outputs: { type: 'array', items: requestedOutput },
  },
} as const;

/** What the infer route's body parser produces: the parsed header and the bytes after it. */
export const inferBodySchema = {
  type: 'object',
  required: ['header'],
  properties: { header: inferRequestSchema },
} as const;

export const repositoryIndexSchema = {
  type: 'object',
  properties: { ready: { type: 'boolean' } },
} as const;

export const loadModelSchema = {
  type: 'object',
  properties: {
    parameters: {
      type: 'object',
      properties: { config: { type: 'string' } },
    },
  },
} as const;

export const unloadModelSchema = {
  type: 'object',
  properties: { parameters: { type: 'object' } },
} as const;
