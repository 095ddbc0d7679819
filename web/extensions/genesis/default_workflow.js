// Genesis: the canvas opens on OUR default workflow.
//
// The frontend loads `window.comfyAPI.defaultGraph.defaultGraph` when a user has no saved or
// draft workflow (it is the same object its loader reads).  Out of the box that is a
// Z-Image-Turbo graph whose models and nodes this server does not have; we replace its
// contents with workflows/default_sd15.json — a small SD1.5 graph that runs on the tiny
// models written at first start.  Extensions are imported before the first workflow is
// loaded, so the replacement is in place in time (and "Load Default" uses it too).
const holder = window.comfyAPI?.defaultGraph;
const api = window.comfyAPI?.api?.api;
const app = window.comfyAPI?.app?.app;

async function fetchDefaultWorkflow() {
  const url = api ? api.apiURL("/workflow_templates/genesis/default_sd15.json") : "api/workflow_templates/genesis/default_sd15.json";
  const response = await fetch(url, { cache: "no-cache" });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return response.json();
}

try {
  const ours = await fetchDefaultWorkflow();
  const target = holder?.defaultGraph;
  if (target && ours && Array.isArray(ours.nodes)) {
    for (const key of Object.keys(target)) delete target[key];
    Object.assign(target, structuredClone(ours));
    holder.defaultGraphJSON = JSON.stringify(ours);
  }
} catch (err) {
  console.warn("[genesis] could not install the default workflow; keeping the frontend's", err);
}

app?.registerExtension({ name: "genesis.DefaultWorkflow" });
