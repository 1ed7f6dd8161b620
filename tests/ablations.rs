//! models/ablations/: the SE paper's section 6 as specs. Each compiles in both syntaxes to the
//! same summary, its totals and SE blocks are snapshotted (one snapshot per file), and each
//! variant's defining property is checked on the graph itself.

mod common;
use common::*;
use se_compile::ir::ops::{ActFn, MergeKind, PoolKind};
use se_compile::ir::{Graph, NodeId, Op};
use se_compile::report::{summary::Depth, thousands};
use se_compile::ValidGraph;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// One SE block found in a graph: the Multiply of a feature map (H, W, C) by a (1, 1, C) gate.
#[derive(Debug)]
struct SeBlock {
    multiply: NodeId,
    /// The feature map the gate scales.
    x: NodeId,
    channels: usize,
    width: usize,
    squeeze: PoolKind,
    gate: ActFn,
}

fn se_blocks(g: &Graph) -> Vec<SeBlock> {
    let mut out = vec![];
    for id in g.ids() {
        let node = g.node(id);
        let Op::Merge(m) = &node.op else { continue };
        if m.kind != MergeKind::Multiply || node.inputs.len() != 2 {
            continue;
        }
        let (x, gate) = (node.inputs[0], node.inputs[1]);
        let Op::Activation(a) = &g.node(gate).op else {
            continue;
        };
        // Back from the gate to the pool: pool → reshape → squeeze → (relu) → excite → gate.
        let mut chain = vec![gate];
        let mut cur = gate;
        let pool = loop {
            cur = g.node(cur).inputs[0];
            match &g.node(cur).op {
                Op::GlobalPool(p) => break p.kind,
                _ => chain.push(cur),
            }
        };
        chain.reverse();
        // chain[0] is the reshape, chain[1] the squeeze layer.
        let width = *g.node(chain[1]).shape.last().unwrap();
        out.push(SeBlock {
            multiply: id,
            x,
            channels: *g.node(x).shape.last().unwrap(),
            width,
            squeeze: pool,
            gate: a.function,
        });
    }
    out
}

fn files(ext: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ablations");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

fn compile(path: &Path) -> (se_compile::SourceFile, ValidGraph) {
    let src = source(path);
    let vg = build(&src);
    (src, vg)
}

/// The totals and the SE blocks of one variant, as the snapshot records them.
fn report(src: &se_compile::SourceFile, vg: &ValidGraph) -> String {
    let t = vg.totals();
    let base = se_compile::compile_without_se(src).expect("compiles without SE");
    let b = base.totals();
    let (p, bp) = (t.params.total(), b.params.total());
    let mut s = String::new();
    writeln!(s, "model: {}", vg.graph().model).unwrap();
    writeln!(
        s,
        "params: {} (trainable {}, non-trainable {})",
        thousands(p),
        thousands(t.params.trainable),
        thousands(t.params.non_trainable)
    )
    .unwrap();
    writeln!(s, "MACs: {}", thousands(t.macs)).unwrap();
    writeln!(
        s,
        "over `se: off`: +{} params ({:+.2}%), +{} MACs ({:+.3}%)",
        thousands(p - bp),
        100.0 * (p - bp) as f64 / bp as f64,
        thousands(t.macs - b.macs),
        100.0 * (t.macs - b.macs) as f64 / b.macs as f64
    )
    .unwrap();
    let blocks = se_blocks(vg.graph());
    writeln!(s, "SE blocks: {}", blocks.len()).unwrap();
    for blk in &blocks {
        let n = vg.graph().node(blk.multiply);
        writeln!(
            s,
            "  {:<12} {:>4} -> {:>4} -> {:>4}  squeeze {:?}, gate {}",
            n.name,
            blk.channels,
            blk.width,
            blk.channels,
            blk.squeeze,
            blk.gate.name()
        )
        .unwrap();
    }
    s
}

#[test]
fn every_ablation_compiles_and_its_totals_are_snapshotted() {
    let yaml = files("yaml");
    assert_eq!(yaml.len(), 15, "{yaml:?}");
    for path in &yaml {
        let (src, vg) = compile(path);
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        insta::assert_snapshot!(format!("ablation_{name}"), report(&src, &vg));
    }
}

#[test]
fn both_syntaxes_give_identical_summaries() {
    let yaml = files("yaml");
    let dsl = files("se");
    assert_eq!(yaml.len(), dsl.len(), "every YAML variant has a DSL twin");
    for (y, d) in yaml.iter().zip(&dsl) {
        assert_eq!(y.file_stem(), d.file_stem());
        let (ys, yv) = compile(y);
        let (ds, dv) = compile(d);
        for depth in [Depth::Layer, Depth::Block, Depth::Stage] {
            assert_eq!(
                summary_text(&yv, &ys, depth).replace(".yaml", ".se"),
                summary_text(&dv, &ds, depth).replace(".yaml", ".se"),
                "{}",
                y.display()
            );
        }
    }
}

fn variant(name: &str) -> (ValidGraph, Vec<SeBlock>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/ablations/{name}.yaml"));
    let (_, vg) = compile(&path);
    let blocks = se_blocks(vg.graph());
    (vg, blocks)
}

#[test]
fn each_variant_has_its_defining_property() {
    let stage_channels = |planes: usize, n: usize| vec![planes * 4; n];
    let standard: Vec<usize> = [(64, 3), (128, 4), (256, 6), (512, 3)]
        .iter()
        .flat_map(|&(p, n)| stage_channels(p, n))
        .collect();
    // Ratio (Table 5): width C / r everywhere.
    for r in [2, 4, 8, 16, 32] {
        let name = if r == 16 {
            "standard".into()
        } else {
            format!("r{r}")
        };
        let (_, b) = variant(&name);
        assert_eq!(b.iter().map(|b| b.channels).collect::<Vec<_>>(), standard);
        assert!(b.iter().all(|b| b.width == b.channels / r), "{name}: {b:?}");
        assert!(b
            .iter()
            .all(|b| b.squeeze == PoolKind::Avg && b.gate == ActFn::Sigmoid));
    }
    // Squeeze (Table 6) and excitation (Table 7).
    let (_, b) = variant("squeeze_max");
    assert!(b.len() == 16 && b.iter().all(|b| b.squeeze == PoolKind::Max));
    for (name, f) in [("gate_relu", ActFn::Relu), ("gate_tanh", ActFn::Tanh)] {
        let (_, b) = variant(name);
        assert!(b.len() == 16 && b.iter().all(|b| b.gate == f), "{name}");
    }
    // Stages (Table 8): SE in one stage only.
    for (name, planes, n) in [
        ("stage_conv2", 64, 3),
        ("stage_conv3", 128, 4),
        ("stage_conv4", 256, 6),
    ] {
        let (_, b) = variant(name);
        assert_eq!(
            b.iter().map(|b| b.channels).collect::<Vec<_>>(),
            stage_channels(planes, n),
            "{name}"
        );
    }
    // Integration (Table 9), by what the gated map is and what reads the product.
    let is = |g: &Graph, id: NodeId, f: &dyn Fn(&Op) -> bool| f(&g.node(id).op);
    let add = |op: &Op| matches!(op, Op::Merge(m) if m.kind == MergeKind::Add);
    let relu = |op: &Op| matches!(op, Op::Activation(a) if a.function == ActFn::Relu);
    let conv = |op: &Op| matches!(op, Op::Conv2d(_));
    let bn = |op: &Op| matches!(op, Op::BatchNorm(_));
    type Gated<'a> = Box<dyn Fn(&Graph, NodeId) -> bool + 'a>;
    type Reader<'a> = &'a dyn Fn(&Op) -> bool;
    let any_reader = |_: &Op| true;
    let cases: Vec<(&str, Gated, Reader)> = vec![
        // standard: bn3's output, summed with the identity.
        ("standard", Box::new(|g: &Graph, x| is(g, x, &bn)), &add),
        // SE-PRE: the block's input (the stem's pool or the previous block's ReLU), read by the
        // branch's first 1x1 conv.
        ("pre", Box::new(|g: &Graph, x| !is(g, x, &bn)), &conv),
        // SE-POST: the ReLU of the sum, read by the next block (or the head).
        (
            "post",
            Box::new(|g: &Graph, x| is(g, x, &relu) && is(g, g.node(x).inputs[0], &add)),
            &any_reader,
        ),
        // SE-Identity: the shortcut (the projection's BN, or the block input), into the sum.
        ("identity", Box::new(|_: &Graph, _| true), &add),
        // SE_3x3: the 3x3 conv's ReLU, read by the last 1x1 conv.
        ("3x3", Box::new(|g: &Graph, x| is(g, x, &relu)), &conv),
    ];
    for (name, gated, reader) in cases {
        let (vg, b) = variant(name);
        let g = vg.graph();
        let readers = g.consumers();
        assert_eq!(b.len(), 16, "{name}");
        for blk in &b {
            assert!(gated(g, blk.x), "{name}: gates {}", g.node(blk.x).name);
            for r in &readers[blk.multiply.index()] {
                assert!(
                    reader(&g.node(*r).op),
                    "{name}: read by {}",
                    g.node(*r).name
                );
            }
        }
        let channels: Vec<usize> = b.iter().map(|b| b.channels).collect();
        match name {
            // Each block's input: 64 from the stem, then the previous block's 4 x planes.
            "pre" => assert_eq!(&channels[..5], &[64, 256, 256, 256, 512]),
            "3x3" => assert_eq!(&channels[..4], &[64, 64, 64, 128]),
            _ => assert_eq!(channels, standard, "{name}"),
        }
    }
    // SE-Identity: on the identity path the product and the branch meet in the sum; the gated
    // map is never the branch's bn3.
    let (vg, b) = variant("identity");
    let g = vg.graph();
    for blk in &b {
        let sum = g.consumers()[blk.multiply.index()][0];
        let other = g
            .node(sum)
            .inputs
            .iter()
            .find(|&&i| i != blk.multiply)
            .unwrap();
        assert!(is(g, *other, &bn), "the branch ends in bn3");
        assert_ne!(*other, blk.x);
    }
}

#[test]
fn timm_rounding_with_divisor_gives_timms_widths() {
    // timm's SEModule: make_divisible(C / 16, 8, round_limit=0).
    for (c, want) in [(64, 8), (128, 8), (256, 16), (512, 32), (24, 8), (200, 16)] {
        let spec = format!(
            "model: t\ninput: [4, 4, {c}]\nse: {{r: 16, divisor: 8}}\nlayers:\n  - se\n  - global_avg_pool\n"
        );
        let vg = build(&se_compile::SourceFile::new("t.yaml", spec));
        let b = se_blocks(vg.graph());
        assert_eq!((b[0].channels, b[0].width), (c, want));
    }
    // `channels` sets the width outright, over r and divisor.
    let spec = "model: t\ninput: [4, 4, 64]\nse: {r: 16, divisor: 8, channels: 5}\nlayers:\n  - se\n  - global_avg_pool\n";
    let vg = build(&se_compile::SourceFile::new("t.yaml", spec));
    assert_eq!(se_blocks(vg.graph())[0].width, 5);
}
