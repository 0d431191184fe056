/**
 * Which simulcast layer of one sender a receiver asks for: by the size of the tile it is
 * shown in, and by how well that sender's video actually arrives.
 *
 * - **Tile size** caps the layer: the lowest layer at least as tall as the tile (in device
 *   pixels) is enough; a thumbnail gets layer 0, a big tile the top layer.
 * - **Delivery** moves it down: in each one-second window the receiver counts frames lost
 *   (sequence gaps, frames it could not decode) and the longest freeze the path caused (the
 *   wait between two frames beyond the time between their captures, so a sender that paused
 *   or skipped frames is not taken for a bad path). Two bad windows out of the last three
 *   move it one layer down (at most once per `DOWN_GAP_MS`): a link that cannot carry a layer
 *   stays bad, while one hiccup (a busy device, a burst of loss) passes. (Arrival delay is not
 *   a signal here: measured from capture time it also grows when the sender's encoder falls
 *   behind, which no receiver's layer choice helps; queues on the node's side are the node's
 *   to see, and it moves receivers down on its own drops.)
 * - **Steady delivery** moves it up one layer after a hold-off of clean windows. An up move
 *   that fails soon (a bad window within `PROBE_FAIL_MS`) doubles the hold-off, up to
 *   `MAX_HOLD_OFF_MS`, so a link that cannot carry the higher layer is probed ever more rarely
 *   instead of freezing every few seconds; a long stable stretch resets it.
 *
 * The node does the same on its side from its own queue drops (`--layer-up-hold-off`); this
 * side sees what the node cannot: losses after the node (a shaped downlink, lost datagrams)
 * and its own decoder falling behind. Pure logic, no I/O: `MeetingVideo` feeds it.
 */

/** A window counts as bad when more than this share of the sender's frames were lost. */
export const LOSS_LIMIT = 0.1;
/** ...or when the path held frames back this long (a freeze). */
export const FREEZE_MS = 1_000;
/** Bad windows among the last `BAD_OF` that move the layer down. */
export const BAD_WINDOWS = 2;
export const BAD_OF = 3;
/** At most one down move per this interval (a move needs time to act). */
export const DOWN_GAP_MS = 2_000;
/** Clean time before the first up move after a down move. */
export const HOLD_OFF_MS = 8_000;
/** The hold-off doubles after each failed up move, up to this. */
export const MAX_HOLD_OFF_MS = 64_000;
/** A down move this soon after an up move means the up move failed. */
export const PROBE_FAIL_MS = 10_000;
/** This long on a layer reached by an up move, without trouble, resets the hold-off. */
export const STABLE_RESET_MS = 60_000;

/** The size of each layer the sender sends, lowest first. */
export interface LayerSize {
  width: number;
  height: number;
}

/** One second (or so) of one sender's video as this receiver saw it. */
export interface DeliveryWindow {
  /** Frames received (decodable or not). */
  received: number;
  /** Frames missing: sequence gaps, and frames dropped before decoding. */
  lost: number;
  /** Longest freeze the path caused, ms: the wait between two frames beyond the time between their captures. */
  longestGapMs: number;
}

/** The layer a tile of `tileHeight` device pixels needs: the lowest at least that tall. */
export function layerForTile(layers: readonly LayerSize[], tileHeight: number): number {
  if (layers.length === 0) return 0;
  const i = layers.findIndex((l) => l.height >= tileHeight);
  return i === -1 ? layers.length - 1 : i;
}

/** Whether a window says the path cannot carry the current layer. */
export function isBadWindow(w: DeliveryWindow): boolean {
  return badWindowReason(w) !== undefined;
}

/** Why a window is bad ("loss 12%", "freeze 1300 ms"), or undefined. */
export function badWindowReason(w: DeliveryWindow): string | undefined {
  const total = w.received + w.lost;
  if (total > 0 && w.lost / total > LOSS_LIMIT) return `loss ${Math.round((100 * w.lost) / total)}%`;
  if (w.longestGapMs > FREEZE_MS) return `freeze ${Math.round(w.longestGapMs)} ms`;
  return undefined;
}

/** One receiver's choice of one sender's layer. */
export class LayerChoice {
  /** The ceiling delivery allows (lowered by bad windows, raised after the hold-off). */
  private cap: number;
  private holdOff = HOLD_OFF_MS;
  private lastDown = -Infinity;
  private lastUp = -Infinity;
  /** Since when delivery has been clean (for the up move and the hold-off reset). */
  private cleanSince: number;
  private tile: number;
  /** Down moves made, and why the last one was. */
  downMoves = 0;
  lastDownReason = "";
  /** Whether each of the last `BAD_OF` windows was bad, newest last. */
  private readonly recent: boolean[] = [];

  constructor(
    private readonly layers: number,
    now: number,
    tileLayer = layers - 1,
  ) {
    this.cap = layers - 1;
    this.tile = Math.min(tileLayer, layers - 1);
    this.cleanSince = now;
  }

  /** The layer to ask for now. */
  get layer(): number {
    return Math.max(0, Math.min(this.cap, this.tile));
  }

  /** The current hold-off before an up move, ms. */
  get upHoldOff(): number {
    return this.holdOff;
  }

  /** The tile's layer changed (resized, or the speaker's tile grew). Returns the layer to ask for. */
  setTileLayer(layer: number): number {
    this.tile = Math.max(0, Math.min(layer, this.layers - 1));
    return this.layer;
  }

  /** Account one window at `now`; returns the layer to ask for. */
  observe(w: DeliveryWindow, now: number): number {
    const reason = badWindowReason(w);
    const bad = reason !== undefined;
    this.recent.push(bad);
    if (this.recent.length > BAD_OF) this.recent.shift();
    if (bad) {
      this.cleanSince = now;
      const sustained = this.recent.filter(Boolean).length >= BAD_WINDOWS;
      if (sustained && now - this.lastDown >= DOWN_GAP_MS && this.layer > 0) {
        if (now - this.lastUp < PROBE_FAIL_MS) this.holdOff = Math.min(this.holdOff * 2, MAX_HOLD_OFF_MS);
        this.cap = this.layer - 1;
        this.lastDown = now;
        this.downMoves++;
        this.lastDownReason = reason;
        this.recent.length = 0; // the next move is judged on the new layer's windows
      }
      return this.layer;
    }
    const clean = now - this.cleanSince;
    // A probe that held for a long stretch: the link carries it, start afresh.
    if (this.lastUp > this.lastDown && now - Math.max(this.lastUp, this.cleanSince) >= STABLE_RESET_MS) this.holdOff = HOLD_OFF_MS;
    if (this.cap < this.layers - 1 && clean >= this.holdOff && now - this.lastUp >= this.holdOff) {
      this.cap++;
      this.lastUp = now;
    }
    return this.layer;
  }
}
