//! The `se-compile` command line: clap structs, calls into the library, diagnostics rendering.

use clap::{Parser, Subcommand, ValueEnum};
use se_compile::diag::{render, Style};
use se_compile::report::summary::{self, Depth, Format, Options};
use se_compile::{compile, load, report, SourceFile, ValidGraph};
use std::io::IsTerminal;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "se-compile",
    version,
    about = "Compile declarative Squeeze-and-Excitation CNN specs (YAML or DSL) into a validated layer graph",
    after_help = "Examples:\n  se-compile check models/*.yaml\n  se-compile summary se_resnet50\n  se-compile summary models/se_resnet50.se --depth stage --format json\n  se-compile compile models/se_resnet50.yaml -o graph.json\n  se-compile graph models/se_block.yaml -o se_block.dot\n\nExit codes: 0 ok, 1 invalid spec, 2 bad usage (unknown option, missing file)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Diagnostics in colour: auto (a terminal without NO_COLOR), always, never.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    color: ColorChoice,
}

#[derive(Clone, Copy, ValueEnum)]
enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, ValueEnum)]
enum DepthArg {
    Stage,
    Block,
    Layer,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Text,
    Json,
    Markdown,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate specs: parse, expand and infer every shape.
    #[command(
        after_help = "Example:\n  se-compile check models/se_resnet50.yaml models/se_resnet50.se\n  (prints `ok: FILE (N layers, P params)` per file; diagnostics go to stderr)"
    )]
    Check {
        /// Spec files (.yaml, .yml, .se) or model names from models/.
        #[arg(required = true)]
        specs: Vec<String>,
    },
    /// Print the Keras-style summary table with MACs and memory.
    #[command(
        after_help = "Examples:\n  se-compile summary models/se_resnet50.yaml\n  se-compile summary se_resnet50 --depth block --show-source\n  se-compile summary models/se_block.yaml --format json > se_block.json"
    )]
    Summary {
        /// A spec file or a model name from models/ (e.g. `se_resnet50`).
        spec: String,
        /// Rows per layer, per block instance, or per stage; totals are the same at every depth.
        #[arg(long, value_enum, default_value = "layer")]
        depth: DepthArg,
        #[arg(long, value_enum, default_value = "text")]
        format: FormatArg,
        /// Add a column with the spec line each row comes from.
        #[arg(long)]
        show_source: bool,
    },
    /// Write the validated IR graph as JSON.
    #[command(after_help = "Example:\n  se-compile compile models/se_resnet50.yaml -o graph.json")]
    Compile {
        spec: String,
        /// Output file (`-` for stdout).
        #[arg(short, long, default_value = "-")]
        output: String,
    },
    /// Write a Graphviz DOT graph with the output shape on every edge.
    #[command(
        after_help = "Example:\n  se-compile graph models/se_block.yaml -o se_block.dot && dot -Tpng se_block.dot -o se_block.png"
    )]
    Graph {
        spec: String,
        /// Output file (`-` for stdout).
        #[arg(short, long, default_value = "-")]
        output: String,
    },
}

/// 1 for an invalid spec; 2 for usage errors (clap's own code for bad arguments).
const EXIT_INVALID: u8 = 1;
const EXIT_USAGE: u8 = 2;

struct Ctx {
    style: Style,
}

impl Ctx {
    /// Loads and compiles one spec, printing any error; `Err` carries the exit code.
    fn build(&self, path: &str) -> Result<(SourceFile, ValidGraph), u8> {
        let src = load(path).map_err(|e| {
            eprintln!("error: {e}");
            if e.is_usage() {
                EXIT_USAGE
            } else {
                EXIT_INVALID
            }
        })?;
        match compile(&src) {
            Ok(vg) => Ok((src, vg)),
            Err(d) => {
                eprint!("{}", render(&d, &src, self.style));
                Err(EXIT_INVALID)
            }
        }
    }
}

fn write_out(path: &str, text: &str) -> Result<(), u8> {
    if path == "-" {
        print!("{text}");
        return Ok(());
    }
    // Write to a temporary file and rename, so an interrupted run never leaves half a file.
    let tmp = format!("{path}.tmp-{}", std::process::id());
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            eprintln!("error: cannot write {path}: {e}");
            EXIT_USAGE
        })?;
    eprintln!("wrote {path}");
    Ok(())
}

fn run(cli: Cli) -> Result<(), u8> {
    let style = match cli.color {
        ColorChoice::Always => Style::Color,
        ColorChoice::Never => Style::Plain,
        ColorChoice::Auto
            if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() =>
        {
            Style::Color
        }
        ColorChoice::Auto => Style::Plain,
    };
    let cx = Ctx { style };
    match cli.cmd {
        Cmd::Check { specs } => {
            let mut worst = 0;
            for s in &specs {
                match cx.build(s) {
                    Ok((src, vg)) => println!(
                        "ok: {} ({} layers, {} params)",
                        src.name,
                        vg.graph().nodes.len(),
                        report::thousands(vg.totals().params.total())
                    ),
                    Err(code) => worst = worst.max(code),
                }
            }
            if worst != 0 {
                return Err(worst);
            }
        }
        Cmd::Summary {
            spec,
            depth,
            format,
            show_source,
        } => {
            let (src, vg) = cx.build(&spec)?;
            let opts = Options {
                depth: match depth {
                    DepthArg::Stage => Depth::Stage,
                    DepthArg::Block => Depth::Block,
                    DepthArg::Layer => Depth::Layer,
                },
                format: match format {
                    FormatArg::Text => Format::Text,
                    FormatArg::Json => Format::Json,
                    FormatArg::Markdown => Format::Markdown,
                },
                show_source,
            };
            print!("{}", summary::render(&vg, &src, &opts));
        }
        Cmd::Compile { spec, output } => {
            let (src, vg) = cx.build(&spec)?;
            let mut text = serde_json::to_string_pretty(&report::ir_json::ir_json(&vg, &src))
                .expect("plain JSON");
            text.push('\n');
            write_out(&output, &text)?;
        }
        Cmd::Graph { spec, output } => {
            let (_, vg) = cx.build(&spec)?;
            write_out(&output, &report::dot::dot(&vg))?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => ExitCode::from(code),
    }
}
