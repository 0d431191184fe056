/**
 * WebTransport stream framing: each frame is a 4-byte big-endian length, then the frame.
 */

/** Prefix `frame` with its length. */
export function encodeRecord(frame: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + frame.length);
  new DataView(out.buffer).setUint32(0, frame.length, false);
  out.set(frame, 4);
  return out;
}

/** Splits a byte stream into records; chunks may cut records anywhere. */
export class RecordDecoder {
  private buf: Uint8Array = new Uint8Array(0);

  constructor(private readonly maxRecord: number) {}

  /** Append a chunk and return every record it completes. Throws on an oversized record. */
  push(chunk: Uint8Array): Uint8Array[] {
    if (this.buf.length === 0) {
      this.buf = chunk;
    } else {
      const joined = new Uint8Array(this.buf.length + chunk.length);
      joined.set(this.buf, 0);
      joined.set(chunk, this.buf.length);
      this.buf = joined;
    }
    const records: Uint8Array[] = [];
    let pos = 0;
    while (this.buf.length - pos >= 4) {
      const view = new DataView(this.buf.buffer, this.buf.byteOffset + pos, 4);
      const len = view.getUint32(0, false);
      if (len > this.maxRecord) throw new Error(`record of ${len} bytes exceeds ${this.maxRecord}`);
      if (this.buf.length - pos - 4 < len) break;
      records.push(this.buf.slice(pos + 4, pos + 4 + len));
      pos += 4 + len;
    }
    this.buf = pos === 0 ? this.buf : this.buf.slice(pos);
    return records;
  }

  /** Bytes held of an incomplete record. */
  get pending(): number {
    return this.buf.length;
  }
}
