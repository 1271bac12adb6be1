//! Prints `name path` for every example function and image (used by the
//! demo script).

fn main() {
    for (name, path) in wisp_function_artifacts::all() {
        println!("{name} {path}");
    }
}
