use dfdx::prelude::*;
use se_compile::lower::layers::{input_act, Net};
fn main() {
    let name = std::env::args()
        .nth(1)
        .unwrap_or("models/se_resnet_mini.yaml".into());
    let hw: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(0);
    let bs: usize = std::env::args()
        .nth(3)
        .map(|s| s.parse().unwrap())
        .unwrap_or(8);
    let mut src = se_compile::load(&name).unwrap();
    if hw > 0 {
        src.text = src
            .text
            .replace("input: [224, 224, 3]", &format!("input: [{hw}, {hw}, 3]"));
    }
    let vg = se_compile::compile(&src).unwrap();
    let mut net = Net::new(&vg, 1);
    println!(
        "params {:?} summary {} {}",
        net.param_counts(),
        vg.totals().params.trainable,
        vg.totals().params.non_trainable
    );
    let s = net.input_shape().to_vec();
    let n: usize = bs * s.iter().product::<usize>();
    let mut rng = se_compile::lower::rng::Rng::new(3);
    let x: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
    let labels: Vec<usize> = (0..bs).map(|i| i % 10).collect();
    for step in 0..3 {
        let t = std::time::Instant::now();
        let inp = input_act::<OwnedTape<f32, Cpu>>(&net.dev, x.clone(), vec![bs, s[0], s[1], s[2]]);
        let logits = net.forward(inp, true);
        let t1 = t.elapsed();
        let (loss, _) = se_compile::lower::autodiff::cross_entropy(logits, &labels);
        println!("loss {}", loss.array());
        let g = loss.backward();
        let p = &net.params[0];
        let gv = g.get(&p.t).as_vec();
        println!(
            "step {step}: fwd {:?} total {:?} grad0 norm {}",
            t1,
            t.elapsed(),
            gv.iter().map(|v| v * v).sum::<f32>().sqrt()
        );
    }
}
