// Runs the compiled extension's `activate` outside VS Code, with the `vscode` module and the
// language client replaced by recorders, and prints (as JSON) what it would start: the server
// command, its arguments, the document selector and the initializationOptions, for settings
// given as JSON in argv[2]. tests/vscode.rs then starts that very command and checks the
// server honours those options. Usage: node test/activate.js '{"path": "...", ...}'
"use strict";
const Module = require("module");
const settings = JSON.parse(process.argv[2] || "{}");
const started = [];
const vscode = {
  workspace: {
    getConfiguration: (section) => ({
      get: (key, dflt) => (section === "se-compile" && key in settings ? settings[key] : dflt),
    }),
    onDidChangeConfiguration: () => ({ dispose() {} }),
  },
  window: {
    showErrorMessage: (m) => started.push({ error: m }),
  },
};
class LanguageClient {
  constructor(id, name, serverOptions, clientOptions) {
    started.push({ id, name, serverOptions, clientOptions });
  }
  async start() {}
  async stop() {}
}
const client = { LanguageClient, TransportKind: { stdio: 0, ipc: 1, pipe: 2, socket: 3 } };
const load = Module._load;
Module._load = function (request, parent, isMain) {
  if (request === "vscode") return vscode;
  if (request === "vscode-languageclient/node") return client;
  return load.call(this, request, parent, isMain);
};
const ext = require("../out/extension.js");
ext.activate({ subscriptions: [] }).then(
  () => console.log(JSON.stringify(started)),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
