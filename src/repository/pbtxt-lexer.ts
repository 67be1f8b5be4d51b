import { SdserveError } from '../errors.js';

/** 1-based line and column of a token in the source text. */
export interface SourcePosition {
  line: number;
  column: number;
}

export type TokenKind = 'identifier' | 'integer' | 'float' | 'string' | 'symbol' | 'end';

export interface Token {
  kind: TokenKind;
  /** The source spelling; for strings the decoded value (already unescaped). */
  text: string;
  position: SourcePosition;
}

const SYMBOLS = new Set(['{', '}', '<', '>', '[', ']', ':', ',', ';', '-']);

const SIMPLE_ESCAPES: Record<string, number> = {
  n: 0x0a, t: 0x09, r: 0x0d, a: 0x07, b: 0x08, f: 0x0c, v: 0x0b,
  '\\': 0x5c, "'": 0x27, '"': 0x22, '?': 0x3f,
};

const isDigit = (c: string) => c >= '0' && c <= '9';
const isHexDigit = (c: string) => /^[0-9a-fA-F]$/.test(c);
const isOctalDigit = (c: string) => c >= '0' && c <= '7';
const isIdentifierStart = (c: string) => /^[A-Za-z_]$/.test(c);
const isIdentifierPart = (c: string) => /^[A-Za-z0-9_]$/.test(c);

/** "file:line:column: message" as an SDS_ERR_CONFIG error. */
export function syntaxError(file: string, position: SourcePosition, message: string): SdserveError {
  return new SdserveError('SDS_ERR_CONFIG', `${file}:${position.line}:${position.column}: ${message}`);
}

/** How a token reads in an error message ("found ..."). */
export function describeToken(token: Token): string {
  switch (token.kind) {
    case 'end': return 'end of input';
    case 'string': return `string ${JSON.stringify(token.text)}`;
    case 'symbol': return `'${token.text}'`;
    case 'identifier': return `identifier '${token.text}'`;
    default: return `number ${token.text}`;
  }
}

/**
 * Splits protobuf text format into tokens. Follows the tokenizer rules of the protobuf text
 * format spec: `#` comments to end of line, C-style string escapes producing bytes (so `\xE2`
 * sequences decode as UTF-8), and numbers that may not run straight into an identifier.
 */
export class PbtxtLexer {
  private offset = 0;
  private line = 1;
  private column = 1;

  constructor(private readonly text: string, private readonly file: string) {}

  next(): Token {
    this.skipWhitespaceAndComments();
    const position = this.here();
    const c = this.peekChar();
    if (c === '') return { kind: 'end', text: '', position };
    if (c === '"' || c === "'") return { kind: 'string', text: this.readString(), position };
    if (isDigit(c) || (c === '.' && isDigit(this.peekChar(1)))) return this.readNumber(position);
    if (isIdentifierStart(c)) return { kind: 'identifier', text: this.readIdentifier(), position };
    if (SYMBOLS.has(c)) {
      this.advance();
      return { kind: 'symbol', text: c, position };
    }
    throw syntaxError(this.file, position, `unexpected character ${JSON.stringify(c)}`);
  }

  private here(): SourcePosition {
    return { line: this.line, column: this.column };
  }

  private peekChar(ahead = 0): string {
    return this.text[this.offset + ahead] ?? '';
  }

  private advance(): string {
    const c = this.text[this.offset++];
    if (c === '\n') {
      this.line += 1;
      this.column = 1;
    } else {
      this.column += 1;
    }
    return c;
  }

  private skipWhitespaceAndComments(): void {
    for (;;) {
      const c = this.peekChar();
      if (c === '#') {
        while (this.peekChar() !== '' && this.peekChar() !== '\n') this.advance();
      } else if (c !== '' && /\s/.test(c)) {
        this.advance();
      } else {
        return;
      }
    }
  }

  private readIdentifier(): string {
    let name = '';
    while (isIdentifierPart(this.peekChar())) name += this.advance();
    return name;
  }

  private readNumber(position: SourcePosition): Token {
    let text = '';
    let kind: TokenKind = 'integer';
    if (this.peekChar() === '0' && /[xX]/.test(this.peekChar(1))) {
      text += this.advance() + this.advance();
      while (isHexDigit(this.peekChar())) text += this.advance();
      if (text.length === 2) throw syntaxError(this.file, position, `expected hex digits after '${text}'`);
    } else {
      while (isDigit(this.peekChar())) text += this.advance();
      if (this.peekChar() === '.') {
        kind = 'float';
        text += this.advance();
        while (isDigit(this.peekChar())) text += this.advance();
      }
      if (/[eE]/.test(this.peekChar())) {
        kind = 'float';
        text += this.advance();
        if (/[+-]/.test(this.peekChar())) text += this.advance();
        if (!isDigit(this.peekChar())) {
          throw syntaxError(this.file, this.here(), `expected exponent digits in number '${text}'`);
        }
        while (isDigit(this.peekChar())) text += this.advance();
      }
      if (/[fF]/.test(this.peekChar())) {
        kind = 'float';
        this.advance();
      }
    }
    if (kind === 'integer' && /^0[0-9]/.test(text) && !/^0[0-7]+$/.test(text)) {
      throw syntaxError(this.file, position, `expected octal digits after a leading 0 in number '${text}'`);
    }
    if (isIdentifierPart(this.peekChar()) || this.peekChar() === '.') {
      throw syntaxError(this.file, this.here(),
        `expected a separator after number '${text}', found ${JSON.stringify(this.peekChar())}`);
    }
    return { kind, text, position };
  }

  private readString(): string {
    const quote = this.advance();
    const bytes: number[] = [];
    for (;;) {
      const position = this.here();
      const c = this.peekChar();
      if (c === '' || c === '\n') {
        throw syntaxError(this.file, position, `expected closing ${quote} of string, found ${c === '' ? 'end of input' : 'end of line'}`);
      }
      this.advance();
      if (c === quote) break;
      if (c === '\\') {
        bytes.push(...this.readEscape(position));
      } else {
        bytes.push(...Buffer.from(c, 'utf8'));
      }
    }
    return Buffer.from(bytes).toString('utf8');
  }

  private readEscape(position: SourcePosition): number[] {
    const c = this.peekChar();
    if (Object.hasOwn(SIMPLE_ESCAPES, c)) {
      this.advance();
      return [SIMPLE_ESCAPES[c]];
    }
    if (isOctalDigit(c)) {
      let digits = '';
      while (digits.length < 3 && isOctalDigit(this.peekChar())) digits += this.advance();
      const value = parseInt(digits, 8);
      if (value > 0xff) throw syntaxError(this.file, position, `octal escape '\\${digits}' is larger than one byte`);
      return [value];
    }
    if (c === 'x' || c === 'X') {
      this.advance();
      let digits = '';
      while (digits.length < 2 && isHexDigit(this.peekChar())) digits += this.advance();
      if (digits === '') throw syntaxError(this.file, position, "expected hex digits after '\\x'");
      return [parseInt(digits, 16)];
    }
    if (c === 'u' || c === 'U') {
      this.advance();
      const length = c === 'u' ? 4 : 8;
      let digits = '';
      while (digits.length < length && isHexDigit(this.peekChar())) digits += this.advance();
      const codePoint = parseInt(digits, 16);
      if (digits.length !== length || codePoint > 0x10ffff) {
        throw syntaxError(this.file, position, `expected ${length} hex digits of a code point after '\\${c}'`);
      }
      return [...Buffer.from(String.fromCodePoint(codePoint), 'utf8')];
    }
    throw syntaxError(this.file, position, `unknown escape '\\${c}' in string`);
  }
}
