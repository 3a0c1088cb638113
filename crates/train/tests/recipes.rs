//! Every shipped recipe parses and validates (files they point at need not exist yet).

use seqtopk_train::{Recipe, ScheduleKind};

#[test]
fn shipped_recipes_are_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../recipes");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let recipe = Recipe::from_file(&path, &[]).unwrap_or_else(|e| panic!("{e}"));
            names.push(recipe.name.clone());
        }
    }
    names.sort();
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
