// The viewer's URLs, all relative to the app root (the page's <base href>).

const enc = encodeURIComponent;

export function runPath(flow, run) {
  return `run/${enc(flow)}/${enc(run)}`;
}

export function cardPath(flow, run, card) {
  return `${runPath(flow, run)}/${enc(card.step)}/${enc(card.task)}/${enc(card.name)}`;
}

// The card on its own: our host page around the sandboxed card.
export function cardSource(flow, run, card) {
  return `card/${enc(flow)}/${enc(run)}/${enc(card.step)}/${enc(card.task)}/${enc(card.name)}`;
}

// The card's own HTML, which the viewer frames sandboxed and feeds from its own socket.
export function cardHtml(flow, run, card) {
  return `card-html/${enc(flow)}/${enc(run)}/${enc(card.step)}/${enc(card.task)}/${enc(card.name)}`;
}

// That page apart from Metaflow's card bundle (JSON), which a warm frame writes (shells.js).
export function cardPage(flow, run, card) {
  return `api/cards/${enc(flow)}/${enc(run)}/${enc(card.step)}/${enc(card.task)}/${enc(card.name)}/page`;
}

export function cardTopic(flow, run, card) {
  return `card/${flow}/${run}/${card.step}/${card.task}/${card.name}`;
}

export function taskPath(flow, run, row) {
  return `${runPath(flow, run)}/${enc(row.step)}/${enc(row.task)}`;
}

export function taskTopic({ flow, run, step, task }) {
  return `task/${flow}/${run}/${step}/${task}`;
}
