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

// Which card to show: stay on a running task's card; else the most recently started running
// task's first card; else stay put; else the last card of the run.
export function followCard(rows, current) {
  const withCards = rows.filter((row) => row.card);
  if (!withCards.length) return null;
  const shown = current && withCards.find((row) => row.id === current);
  if (shown && shown.status === "running") return shown.id;
  const running = withCards.filter((row) => row.status === "running");
  if (running.length) {
    running.sort((a, b) => (b.started || 0) - (a.started || 0));
    return running[0].id;
  }
  if (shown) return shown.id;
  return withCards[withCards.length - 1].id;
}
