//! The `se-compile` command line: parses the arguments and hands them to the subcommand's
//! handler in `commands/` (one file per subcommand, as cargo's).

mod commands;

use clap::{Parser, Subcommand};
use commands::shared::{ColorChoice, Ctx};
use commands::{
    analyze, bench, check, compile, diff, eval, export, graph, import_weights, lsp, memory, parity,
    predict, schema, shard, summary, train, view,
};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "se-compile",
    version,
    about = "Compile declarative Squeeze-and-Excitation CNN specs (YAML or DSL) into a validated layer graph",
    after_help = "Examples:\n  se-compile check models/*.yaml\n  se-compile summary se_resnet50\n  se-compile summary models/se_resnet50.se --depth stage --format json\n  se-compile diff models/se_resnet50.yaml models/se_resnet50_timm.yaml\n  se-compile compile models/se_resnet50.yaml -o graph.json\n  se-compile graph models/se_block.yaml -o se_block.dot\n\nExit codes: 0 ok, 1 invalid spec, 2 bad usage (unknown option, missing file), 141 standard output\nclosed by its reader (`| head`), quietly, as SIGPIPE ends Unix tools."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Diagnostics in colour: auto (a terminal without NO_COLOR), always, never.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    color: ColorChoice,
}

/// The subcommands, in `--help`'s order; each one's help text is on its arguments.
#[derive(Subcommand)]
enum Cmd {
    Check(check::CheckArgs),
    Summary(summary::SummaryArgs),
    Diff(diff::DiffArgs),
    Compile(compile::CompileArgs),
    Train(Box<train::TrainArgs>),
    Eval(eval::EvalArgs),
    Analyze(analyze::AnalyzeArgs),
    Predict(predict::PredictArgs),
    Bench(bench::BenchArgs),
    Memory(memory::MemoryArgs),
    Parity(parity::ParityArgs),
    Export(export::ExportArgs),
    ImportWeights(import_weights::ImportWeightsArgs),
    Schema(schema::SchemaArgs),
    Graph(graph::GraphArgs),
    Shard(shard::ShardArgs),
    View(view::ViewArgs),
    Lsp(lsp::LspArgs),
}

fn run(cli: Cli) -> Result<(), u8> {
    let cx = Ctx::new(cli.color);
    match cli.cmd {
        Cmd::Check(a) => check::run(&cx, a),
        Cmd::Summary(a) => summary::run(&cx, a),
        Cmd::Diff(a) => diff::run(&cx, a),
        Cmd::Compile(a) => compile::run(&cx, a),
        Cmd::Train(a) => train::run(&cx, *a),
        Cmd::Eval(a) => eval::run(&cx, a),
        Cmd::Analyze(a) => analyze::run(&cx, a),
        Cmd::Predict(a) => predict::run(&cx, a),
        Cmd::Bench(a) => bench::run(&cx, a),
        Cmd::Memory(a) => memory::run(&cx, a),
        Cmd::Parity(a) => parity::run(a),
        Cmd::Export(a) => export::run(&cx, a),
        Cmd::ImportWeights(a) => import_weights::run(&cx, a),
        Cmd::Schema(a) => schema::run(a),
        Cmd::Graph(a) => graph::run(&cx, a),
        Cmd::Shard(a) => shard::run(a),
        Cmd::View(a) => view::run(&cx, a),
        Cmd::Lsp(a) => lsp::run(a),
    }
}

fn main() -> ExitCode {
    commands::shared::stdout_errors_are_errors();
    let cli = Cli::parse();
    se_compile::lower::tune_allocator();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => ExitCode::from(code),
    }
}
