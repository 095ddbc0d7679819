// Genesis: when the server has finished writing models (the tiny demo models of a first start),
// refresh the canvas's model lists so the new files show up without a reload.
//
// The server sends the WebSocket message `genesis.models_changed`; the frontend dispatches a
// message type to listeners registered for it, so this listener must exist before it arrives
// (extensions load before the socket opens).
const api = window.comfyAPI?.api?.api;
const app = window.comfyAPI?.app?.app;

async function refreshModelLists() {
  try {
    const command = app?.extensionManager?.command;
    if (command?.execute) {
      await command.execute("Comfy.RefreshNodeDefinitions");
    } else {
      await app?.refreshComboInNodes?.();
    }
  } catch (err) {
    console.warn("[genesis] could not refresh the model lists", err);
  }
}

api?.addEventListener("genesis.models_changed", refreshModelLists);
app?.registerExtension({ name: "genesis.RefreshModels" });
