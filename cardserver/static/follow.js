// Follow mode, as pure functions over what the viewer knows.

const rank = (run) => [run.started || 0, run.run];

export function newer(a, b) {
  const [ta, ia] = rank(a);
  const [tb, ib] = rank(b);
  if (ta !== tb) return ta > tb;
  return ia.localeCompare(ib, undefined, { numeric: true }) > 0;
}

// The newest run among the flows' newest runs (or of the pinned flow).
export function newestRun(flows, pinnedFlow) {
  let best = null;
  for (const flow of flows) {
    if (pinnedFlow && flow.flow !== pinnedFlow) continue;
    if (flow.newest && (!best || newer(flow.newest, best))) best = flow.newest;
  }
  return best;
}

// A card that may still change: its task runs, and the card is of the task's newest attempt (a
// retried task keeps the failed attempt's card, which never changes again).
const live = (row) => row.status === "running" && (row.attempt == null || row.attempt === row.attempts - 1);

// Which card to show: stay on a live card; else the most recently started running task's card
// of its newest attempt; else stay put; else the last card of the run.
export function followCard(rows, current) {
  const withCards = rows.filter((row) => row.card);
  if (!withCards.length) return null;
  const shown = current && withCards.find((row) => row.id === current);
  if (shown && live(shown)) return shown.id;
  const running = withCards.filter(live);
  if (running.length) {
    running.sort((a, b) => (b.started || 0) - (a.started || 0) || (b.attempt || 0) - (a.attempt || 0));
    return running[0].id;
  }
  if (shown) return shown.id;
  return withCards[withCards.length - 1].id;
}
