//! Every shipped recipe parses and validates (files they point at need not exist yet).

use seqtopk_train::{Recipe, ScheduleKind};

#[test]
fn shipped_recipes_are_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../recipes");
    let mut names = Vec::new();
    let study = format!("{dir}/study");
    for folder in [dir, study.as_str()] {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let recipe = Recipe::from_file(&path, &[]).unwrap_or_else(|e| panic!("{e}"));
                names.push(recipe.name.clone());
            }
        }
    }
    names.sort();
    for run in [
        "scratch-topk-k4",
        "scratch-seqtopk-k4",
        "sparsify-topk-k2",
        "sparsify-seqtopk-k1",
        "swap-eval",
    ] {
        assert!(names.contains(&format!("study-{run}")), "{names:?}");
    }
    for domain in ["math", "code", "law", "writing"] {
        for router in ["seqtopk", "topk"] {
            assert!(
                names.contains(&format!("olmoe-{router}-{domain}")),
                "{names:?}"
            );
        }
    }
    assert!(names.contains(&"tiny-seqtopk-math".to_string()));
}

#[test]
fn seqtopk_and_topk_recipes_differ_only_in_routing_and_name() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../recipes");
    for domain in ["math", "code", "law", "writing"] {
        let load = |router: &str| {
            Recipe::from_file(
                std::path::Path::new(&format!("{dir}/olmoe-{router}-{domain}.toml")),
                &[],
            )
            .unwrap()
        };
        let (mut s, t) = (load("seqtopk"), load("topk"));
        assert_eq!(s.schedule.kind, ScheduleKind::Linear);
        s.name = t.name.clone();
        s.router.as_mut().unwrap().mode = t.router.as_ref().unwrap().mode;
        assert_eq!(s, t, "{domain}");
    }
}

/// The study's twins: a TopK run and its SeqTopK counterpart are the same run but for the router,
/// so the study compares routers and nothing else.
#[test]
fn study_twins_differ_only_in_routing_and_name() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../recipes/study");
    for run in ["scratch-{}-k4", "sparsify-{}-k2", "sparsify-{}-k1"] {
        let load = |router: &str| {
            let path = format!("{dir}/{}.toml", run.replace("{}", router));
            Recipe::from_file(std::path::Path::new(&path), &[]).unwrap()
        };
        let (mut s, t) = (load("seqtopk"), load("topk"));
        assert_eq!(s.router.as_ref().unwrap().mode.name(), "seqtopk");
        s.name = t.name.clone();
        s.router.as_mut().unwrap().mode = t.router.as_ref().unwrap().mode;
        assert_eq!(s, t, "{run}");
    }
}
