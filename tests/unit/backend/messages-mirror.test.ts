/**
 * src/backend/messages.ts and python/sdserve_backend/messages.py describe one protocol: the same
 * message types with the same numbers, and the same metadata fields, optional on both sides or
 * on neither.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import ts from 'typescript';

import { MessageType, PROTOCOL_VERSION } from '../../../src/backend/index.js';
import { PYTHON, ROOT } from './start-options.js';

/** The metadata every message carries; each must be described on both sides. */
const MESSAGE_METADATA = [
  'TensorMeta', 'HelloMeta', 'LoadRequestMeta', 'LoadResponseMeta', 'RequestMeta', 'ExecuteRequestMeta',
  'ResponseMeta', 'ExecuteResponseMeta', 'ErrorMeta', 'ProgressMeta', 'ResponseNotifyMeta', 'CancelRequestMeta',
];

interface Fields {
  /** field name -> optional */
  fields: Record<string, boolean>;
  /** A union of shapes: fields are compared by name only. */
  union: boolean;
}

function typeScriptShapes(): Record<string, Fields> {
  const file = join(ROOT, 'src', 'backend', 'messages.ts');
  const source = ts.createSourceFile(file, readFileSync(file, 'utf8'), ts.ScriptTarget.ES2022, true);
  const shapes: Record<string, Fields> = {};
  const members = (list: ts.NodeArray<ts.TypeElement>) => Object.fromEntries(list.filter(ts.isPropertySignature)
    .map((member) => [member.name.getText(source), member.questionToken !== undefined]));
  for (const statement of source.statements) {
    if (ts.isInterfaceDeclaration(statement)) {
      shapes[statement.name.text] = { fields: members(statement.members), union: false };
    } else if (ts.isTypeAliasDeclaration(statement) && ts.isUnionTypeNode(statement.type)) {
      // `{outputs} | {error}`: the literal members' fields; a named member (ErrorMeta) is its own message.
      const literals = statement.type.types.filter(ts.isTypeLiteralNode);
      if (literals.length === 0) continue;
      shapes[statement.name.text] = { fields: Object.assign({}, ...literals.map((l) => members(l.members))), union: true };
    }
  }
  return shapes;
}

const PYTHON_DUMP = `
import json, typing
from sdserve_backend import PROTOCOL_VERSION, messages
shapes = {}
for name, value in vars(messages).items():
    if isinstance(value, type) and typing.is_typeddict(value):
        # with postponed annotations NotRequired[...] stays a string the TypedDict cannot see through
        shapes[name] = {key: key in value.__optional_keys__ or "NotRequired[" in str(annotation)
                        for key, annotation in value.__annotations__.items()}
types = {member.name: member.value for member in messages.MessageType}
print(json.dumps({"protocol": PROTOCOL_VERSION, "shapes": shapes, "types": types}))
`;

function pythonShapes(): { protocol: number; shapes: Record<string, Record<string, boolean>>; types: Record<string, number> } {
  const out = execFileSync(PYTHON, ['-c', PYTHON_DUMP], { env: { ...process.env, PYTHONPATH: join(ROOT, 'python') }, encoding: 'utf8' });
  return JSON.parse(out);
}

test('both sides speak the same protocol version and number the same message types alike', () => {
  const python = pythonShapes();
  assert.equal(python.protocol, PROTOCOL_VERSION);
  const typeScript = Object.fromEntries(Object.entries(MessageType)
    .map(([name, value]) => [name.replace(/([a-z])([A-Z])/g, '$1_$2').toUpperCase(), value]));
  assert.deepEqual(python.types, typeScript);
});

test('every message metadata has the same fields on both sides', () => {
  const python = pythonShapes().shapes;
  const typeScript = typeScriptShapes();
  for (const name of MESSAGE_METADATA) {
    assert.ok(typeScript[name], `messages.ts describes ${name}`);
    assert.ok(python[name], `messages.py describes ${name}`);
    const { fields, union } = typeScript[name];
    if (union) {
      assert.deepEqual(Object.keys(python[name]).sort(), Object.keys(fields).sort(), `${name}: field names`);
    } else {
      assert.deepEqual(python[name], fields, `${name}: fields and which are optional`);
    }
  }
});
