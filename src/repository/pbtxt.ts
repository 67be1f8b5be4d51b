import {
  PbtxtLexer, describeToken, syntaxError, type SourcePosition, type Token,
} from './pbtxt-lexer.js';

export type { SourcePosition } from './pbtxt-lexer.js';

/**
 * A schema-free tree of a protobuf text-format document. The parser cannot know field types, so
 * a scalar keeps the kind of literal it was written as; the schema mapping decides what is valid.
 * Positions are absent for trees built from JSON.
 */
export type PbtxtScalar =
  | { kind: 'string'; value: string; position?: SourcePosition }
  | { kind: 'integer'; value: bigint; position?: SourcePosition }
  | { kind: 'float'; value: number; position?: SourcePosition }
  /** Enum names, bools (true/false/True/False/t/f), inf and nan. */
  | { kind: 'identifier'; value: string; position?: SourcePosition };

export interface PbtxtMessage {
  kind: 'message';
  fields: PbtxtField[];
  position?: SourcePosition;
}

export type PbtxtValue = PbtxtScalar | PbtxtMessage;

/** One `name: value` entry. A list `name: [a, b]` becomes one entry per element, in order. */
export interface PbtxtField {
  name: string;
  value: PbtxtValue;
  /** Written inside `[...]`, which the text format allows only for repeated fields. */
  inList: boolean;
  position?: SourcePosition;
}

const CLOSING_BRACKET: Record<string, string> = { '{': '}', '<': '>' };
const NON_FINITE = new Set(['inf', 'infinity', 'nan']);

/**
 * Parses protobuf text format into a generic tree. Throws `SdserveError('SDS_ERR_CONFIG')` with
 * `file:line:column:` and what was expected versus found.
 */
export function parsePbtxt(text: string, file: string): PbtxtMessage {
  return new PbtxtParser(text, file).parseDocument();
}

class PbtxtParser {
  private readonly lexer: PbtxtLexer;
  private lookahead: Token;

  constructor(text: string, private readonly file: string) {
    this.lexer = new PbtxtLexer(text, file);
    this.lookahead = this.lexer.next();
  }

  parseDocument(): PbtxtMessage {
    const position = this.lookahead.position;
    return { kind: 'message', fields: this.parseFields(undefined), position };
  }

  private take(): Token {
    const token = this.lookahead;
    this.lookahead = this.lexer.next();
    return token;
  }

  private atSymbol(symbol: string): boolean {
    return this.lookahead.kind === 'symbol' && this.lookahead.text === symbol;
  }

  private expectSymbol(symbol: string, context: string): Token {
    if (!this.atSymbol(symbol)) throw this.unexpected(`'${symbol}' ${context}`);
    return this.take();
  }

  private unexpected(expected: string, token: Token = this.lookahead): Error {
    return syntaxError(this.file, token.position, `expected ${expected}, found ${describeToken(token)}`);
  }

  /** Fields up to `closing` (or end of input for the document itself). */
  private parseFields(closing: { symbol: string; opener: Token } | undefined): PbtxtField[] {
    const fields: PbtxtField[] = [];
    for (;;) {
      if (closing && this.atSymbol(closing.symbol)) {
        this.take();
        return fields;
      }
      const atEnd = this.lookahead.kind === 'end';
      if (atEnd && !closing) return fields;
      if (closing && (atEnd || this.atSymbol('}') || this.atSymbol('>'))) {
        const { line, column } = closing.opener.position;
        throw this.unexpected(`'${closing.symbol}' to close the '${closing.opener.text}' at ${line}:${column}`);
      }
      fields.push(...this.parseField());
      if (this.atSymbol(',') || this.atSymbol(';')) this.take();
    }
  }

  private parseField(): PbtxtField[] {
    if (this.atSymbol('[')) {
      throw syntaxError(this.file, this.lookahead.position,
        'extension and Any field names ([...]) are not supported in model configuration');
    }
    if (this.lookahead.kind !== 'identifier') throw this.unexpected('a field name');
    const nameToken = this.take();
    const name = nameToken.text;
    const position = nameToken.position;
    const field = (value: PbtxtValue, inList: boolean): PbtxtField => ({ name, value, inList, position });

    const hasColon = this.atSymbol(':');
    if (hasColon) this.take();
    if (this.atSymbol('{') || this.atSymbol('<')) return [field(this.parseMessage(), false)];
    if (this.atSymbol('[')) return this.parseList(name, hasColon).map((value) => field(value, true));
    if (!hasColon) throw this.unexpected(`':' or '{' after field name '${name}'`);
    return [field(this.parseScalar(name), false)];
  }

  private parseMessage(): PbtxtMessage {
    const opener = this.take();
    const fields = this.parseFields({ symbol: CLOSING_BRACKET[opener.text], opener });
    return { kind: 'message', fields, position: opener.position };
  }

  /** `[a, b]` after `name:`, or `[{...}, {...}]` (messages only) after a bare name. */
  private parseList(name: string, scalarsAllowed: boolean): PbtxtValue[] {
    this.take();
    const values: PbtxtValue[] = [];
    if (this.atSymbol(']')) {
      this.take();
      return values;
    }
    for (;;) {
      if (this.atSymbol('{') || this.atSymbol('<')) {
        values.push(this.parseMessage());
      } else if (scalarsAllowed) {
        values.push(this.parseScalar(name));
      } else {
        throw this.unexpected(`'{' (a list without ':' holds only messages) in field '${name}'`);
      }
      if (this.atSymbol(']')) {
        this.take();
        return values;
      }
      this.expectSymbol(',', `or ']' between list elements of field '${name}'`);
    }
  }

  private parseScalar(name: string): PbtxtScalar {
    const token = this.lookahead;
    switch (token.kind) {
      case 'string': {
        let value = '';
        while (this.lookahead.kind === 'string') value += this.take().text;
        return { kind: 'string', value, position: token.position };
      }
      case 'integer':
        this.take();
        return { kind: 'integer', value: parseInteger(token.text), position: token.position };
      case 'float':
        this.take();
        return { kind: 'float', value: Number(token.text), position: token.position };
      case 'identifier':
        this.take();
        return { kind: 'identifier', value: token.text, position: token.position };
      default:
        if (this.atSymbol('-')) return this.parseNegative(name);
        throw this.unexpected(`a value for field '${name}'`);
    }
  }

  private parseNegative(name: string): PbtxtScalar {
    const minus = this.take();
    const token = this.lookahead;
    if (token.kind === 'integer') {
      this.take();
      return { kind: 'integer', value: -parseInteger(token.text), position: minus.position };
    }
    if (token.kind === 'float') {
      this.take();
      return { kind: 'float', value: -Number(token.text), position: minus.position };
    }
    if (token.kind === 'identifier' && NON_FINITE.has(token.text.toLowerCase())) {
      this.take();
      const value = token.text.toLowerCase() === 'nan' ? NaN : -Infinity;
      return { kind: 'float', value, position: minus.position };
    }
    throw this.unexpected(`a number after '-' in field '${name}'`);
  }
}

/** Decimal, hex (0x..) or, as in C, octal when written with a leading 0. */
function parseInteger(text: string): bigint {
  if (/^0[0-7]+$/.test(text)) return BigInt(`0o${text.slice(1)}`);
  return BigInt(text);
}
