//! Prints `name path` for every example function (used by the demo script).

fn main() {
    for (name, path) in wisp_function_artifacts::all() {
        println!("{name} {path}");
    }
}
