//! Compiles the C half of the SAPI against PHP's headers (php8.2-dev) and
//! links Debian's libphp8.2-embed, unless the `php` feature is off (the fuzz
//! target builds the library alone, without PHP).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=csrc/tq_sapi.c");
    println!("cargo:rerun-if-changed=csrc/tq_sapi.h");
    if std::env::var_os("CARGO_FEATURE_PHP").is_none() {
        return;
    }
    let config = ["php-config8.2", "php-config"]
        .into_iter()
        .find_map(|program| {
            let output = Command::new(program).arg("--includes").output().ok()?;
            output
                .status
                .success()
                .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
        })
        .unwrap_or_else(|| {
            panic!(
                "tqserver-php needs PHP's headers and embed library: install php8.2-dev and \
                 libphp8.2-embed (scripts/deps.sh test does)"
            )
        });
    let mut build = cc::Build::new();
    build
        .file("csrc/tq_sapi.c")
        .warnings(true)
        .flag_if_supported("-Wno-unused-parameter");
    for flag in config.split_whitespace() {
        if let Some(dir) = flag.strip_prefix("-I") {
            build.include(dir);
        }
    }
    build.compile("tq_sapi");
    println!("cargo:rustc-link-lib=dylib=php8.2");
    println!("cargo:rustc-link-search=native=/usr/lib");
}
