// Minimal typings for qlobber 8 (the package ships none); only what the broker uses.
declare module 'qlobber' {
  export interface QlobberOptions {
    separator?: string;
    wildcard_one?: string;
    wildcard_some?: string;
    match_empty_levels?: boolean;
    cache_adds?: boolean | Map<string, unknown>;
  }
  export class Qlobber<V = unknown> {
    constructor(options?: QlobberOptions);
    add(topic: string, value: V): this;
    remove(topic: string, value?: V): this;
    match(topic: string): V[];
    clear(): this;
  }
  const qlobber: { Qlobber: typeof Qlobber };
  export default qlobber;
}
