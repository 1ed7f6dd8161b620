// The se-compile extension: starts `se-compile lsp` over stdio for `.se` files and YAML files
// (the server answers only YAML specs, those with a top-level `layers:` key, and leaves other
// YAML alone), passing the settings as the server's initializationOptions.
import * as vscode from "vscode";
import {
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  TransportKind,
} from "vscode-languageclient/node";

let client: LanguageClient | undefined;

/** The server's initializationOptions, from the `se-compile.*` settings. */
export function initializationOptions(config: vscode.WorkspaceConfiguration): {
  debounceMs: number;
  inlayHints: boolean;
} {
  return {
    debounceMs: config.get<number>("debounceMs", 150),
    inlayHints: config.get<boolean>("inlayHints", true),
  };
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  context.subscriptions.push(
    vscode.workspace.onDidChangeConfiguration(async (e) => {
      if (e.affectsConfiguration("se-compile")) {
        // The options are read at start: restart the server with the new ones.
        await deactivate();
        await start();
      }
    }),
  );
  await start();
}

async function start(): Promise<void> {
  const config = vscode.workspace.getConfiguration("se-compile");
  const command = config.get<string>("path", "se-compile");
  const serverOptions: ServerOptions = {
    command,
    args: ["lsp"],
    transport: TransportKind.stdio,
  };
  const clientOptions: LanguageClientOptions = {
    documentSelector: [
      { scheme: "file", language: "se" },
      { scheme: "untitled", language: "se" },
      { scheme: "file", language: "yaml" },
    ],
    initializationOptions: initializationOptions(config),
    outputChannelName: "se-compile",
  };
  client = new LanguageClient("se-compile", "se-compile", serverOptions, clientOptions);
  try {
    await client.start();
  } catch (e) {
    client = undefined;
    vscode.window.showErrorMessage(
      `se-compile: could not start \`${command} lsp\` (${e}). Install se-compile ` +
        "(cargo install --path .) or set `se-compile.path` to the binary.",
    );
  }
}

export async function deactivate(): Promise<void> {
  if (client) {
    await client.stop();
    client = undefined;
  }
}
