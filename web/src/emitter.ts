/** A minimal typed event emitter. */
export class Emitter<Events> {
  private readonly handlers = new Map<keyof Events, Set<(ev: never) => void>>();

  on<K extends keyof Events>(type: K, fn: (ev: Events[K]) => void): () => void {
    let set = this.handlers.get(type);
    if (!set) this.handlers.set(type, (set = new Set()));
    set.add(fn as (ev: never) => void);
    return () => set!.delete(fn as (ev: never) => void);
  }

  emit<K extends keyof Events>(type: K, ev: Events[K]): void {
    for (const fn of [...(this.handlers.get(type) ?? [])]) {
      try {
        (fn as (ev: Events[K]) => void)(ev);
      } catch (e) {
        // A failing handler must not break the client or the other handlers.
        console.error(`switchboard: ${String(type)} handler failed`, e);
      }
    }
  }
}
