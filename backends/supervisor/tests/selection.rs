//! Selection over recorded hardware reports of the machines people have.

use std::path::PathBuf;

use bitnet_probe::*;
use bitnet_supervisor::{select, Catalog, GpuApi, Inputs, Preferences, Selection};

fn report(os: &str, arch: &str, features: &[&str]) -> HardwareReport {
    HardwareReport {
        schema: SCHEMA,
        os: OsInfo { family: os.into(), name: None, version: None, kernel: None, arch: arch.into(), sandbox: None },
        cpu: CpuInfo {
            arch: arch.into(),
            vendor: None,
            brand: None,
            physical_cores: Some(8),
            logical_cores: 16,
            features: features.iter().map(|s| s.to_string()).collect(),
            caches: vec![],
        },
        memory: MemoryInfo {
            total_bytes: 32 << 30,
            available_bytes: 16 << 30,
            swap_total_bytes: 0,
            swap_free_bytes: 0,
        },
        vendor: VendorSections {
            cuda: Section::unavailable("NVIDIA management library (libnvidia-ml) not found"),
            vulkan: Section::unavailable("Vulkan loader (libvulkan) not found"),
            metal: Section::unavailable("not macOS"),
        },
        source: Source::File,
    }
}

fn vk_device(name: &str, kind: VulkanDeviceKind, local: u64) -> VulkanDevice {
    VulkanDevice {
        index: 0,
        name: name.into(),
        kind,
        vendor_id: 0x10de,
        device_id: 1,
        driver_version: 1,
        api_version: "1.3.0".into(),
        device_local_bytes: local,
        uuid: "00".repeat(16),
        counts_as_gpu: kind != VulkanDeviceKind::Cpu && local > 0,
    }
}

const X86_AVX2: &[&str] = &["sse4.2", "avx", "avx2", "fma", "f16c", "bmi2"];

/// Runs selection with every catalog file installed.
fn run(r: &HardwareReport, format: Option<&str>, prefs: &Preferences) -> Selection {
    let catalog = Catalog::bundled();
    let installed = |f: &str| Some(PathBuf::from("/bin").join(f));
    select(&Inputs {
        report: r,
        catalog: &catalog,
        installed: &installed,
        model_format: format,
        prefs,
        path_server: None,
        cpu_family: None,
        calibrated: &[],
    })
}

fn ids(s: &Selection) -> Vec<&str> {
    s.candidates.iter().map(|c| c.id.as_str()).collect()
}

fn reason<'a>(s: &'a Selection, id: &str) -> &'a str {
    &s.skipped.iter().find(|k| k.id == id).unwrap_or_else(|| panic!("{id} not skipped: {s:?}")).reason
}

#[test]
fn avx2_linux_takes_the_bitnet_cpu_build_then_the_builtin_engine() {
    let s = run(&report("linux", "x86_64", X86_AVX2), Some("i2_s"), &Preferences::default());
    assert_eq!(ids(&s), ["bitnet-cpu-linux-x86_64", "builtin"]);
    assert!(
        reason(&s, "cuda-linux-x86_64").starts_with("needs CPU feature")
            || reason(&s, "cuda-linux-x86_64").contains("cannot load i2_s")
    );
    assert_eq!(reason(&s, "vulkan-linux-x86_64"), "cannot load i2_s models");
    assert_eq!(reason(&s, "bitnet-cpu-windows-x86_64"), "built for windows/x86_64, this is linux/x86_64");
}

#[test]
fn without_a_gpu_the_gpu_builds_say_what_the_probe_said() {
    let s = run(&report("linux", "x86_64", X86_AVX2), None, &Preferences::default());
    assert_eq!(ids(&s), ["bitnet-cpu-linux-x86_64", "builtin"]);
    assert_eq!(
        reason(&s, "cuda-linux-x86_64"),
        "needs an NVIDIA GPU: NVIDIA management library (libnvidia-ml) not found"
    );
    assert_eq!(reason(&s, "vulkan-linux-x86_64"), "needs a Vulkan GPU: Vulkan loader (libvulkan) not found");
}

#[test]
fn without_avx2_only_the_builtin_engine_is_left_and_the_reason_says_sigill() {
    let s = run(&report("linux", "x86_64", &["sse4.2", "avx"]), None, &Preferences::default());
    assert_eq!(ids(&s), ["builtin"]);
    let r = reason(&s, "bitnet-cpu-linux-x86_64");
    assert!(r.contains("avx2") && r.contains("SIGILL"), "{r}");
}

#[test]
fn apple_silicon_prefers_metal_then_the_neon_build() {
    let mut r = report("macos", "aarch64", &["neon", "dotprod", "fp16"]);
    r.vendor.metal = Section::Available(MetalInfo {
        device_name: "Apple M2".into(),
        unified_memory: true,
        recommended_working_set_bytes: 20 << 30,
    });
    let s = run(&r, None, &Preferences::default());
    assert_eq!(ids(&s), ["metal-macos-aarch64", "bitnet-cpu-macos-aarch64", "builtin"]);
    // An I2_S model: Metal cannot load it.
    let s = run(&r, Some("i2_s"), &Preferences::default());
    assert_eq!(ids(&s), ["bitnet-cpu-macos-aarch64", "builtin"]);
}

#[test]
fn nvidia_windows_orders_cuda_vulkan_cpu_builtin_and_checks_compute_capability() {
    let mut r = report("windows", "x86_64", X86_AVX2);
    r.vendor.cuda = Section::Available(CudaInfo {
        driver_version: "551.61".into(),
        cuda_driver_version: Some("12.4".into()),
        devices: vec![CudaDevice {
            index: 0,
            name: "NVIDIA GeForce RTX 3060".into(),
            uuid: None,
            pci_bus_id: None,
            memory_total_bytes: Some(12 << 30),
            memory_free_bytes: None,
            compute_capability: Some("8.6".into()),
        }],
    });
    r.vendor.vulkan = Section::Available(VulkanInfo {
        instance_version: "1.3.0".into(),
        devices: vec![vk_device("NVIDIA GeForce RTX 3060", VulkanDeviceKind::Discrete, 12 << 30)],
    });
    let s = run(&r, Some("q8_0"), &Preferences::default());
    assert_eq!(ids(&s), ["cuda-windows-x86_64", "vulkan-windows-x86_64", "bitnet-cpu-windows-x86_64", "builtin"]);
    // A ternary model: the GPU builds have no kernels for it, the CPU build does.
    let s = run(&r, Some("tq2_0"), &Preferences::default());
    assert_eq!(ids(&s), ["bitnet-cpu-windows-x86_64", "builtin"]);
    assert_eq!(reason(&s, "cuda-windows-x86_64"), "cannot load tq2_0 models");
    assert_eq!(reason(&s, "vulkan-windows-x86_64"), "cannot load tq2_0 models");

    // An old GPU: CUDA is skipped with the capability in the reason.
    if let Section::Available(c) = &mut r.vendor.cuda {
        c.devices[0].compute_capability = Some("5.0".into());
    }
    let s = run(&r, None, &Preferences::default());
    assert_eq!(ids(&s)[0], "vulkan-windows-x86_64");
    assert!(reason(&s, "cuda-windows-x86_64").contains("6.1 or newer; the best GPU here has 5.0"));
}

#[test]
fn lavapipe_only_linux_picks_vulkan_only_when_forced() {
    let mut r = report("linux", "x86_64", X86_AVX2);
    r.vendor.vulkan = Section::Available(VulkanInfo {
        instance_version: "1.3.239".into(),
        devices: vec![vk_device("llvmpipe (LLVM 15.0.6, 256 bits)", VulkanDeviceKind::Cpu, 2 << 30)],
    });
    let s = run(&r, None, &Preferences::default());
    assert_eq!(ids(&s), ["bitnet-cpu-linux-x86_64", "builtin"]);
    let why = reason(&s, "vulkan-linux-x86_64");
    assert!(why.contains("only software devices") && why.contains("llvmpipe"), "{why}");
    // Forced by the config, it is tried on lavapipe (slow, but asked for);
    // forcing it without any Vulkan device still skips it.
    let force = Preferences { force: Some("vulkan-linux-x86_64".into()), ..Preferences::default() };
    assert_eq!(ids(&run(&r, None, &force)), ["vulkan-linux-x86_64"]);
    let none = report("linux", "x86_64", X86_AVX2);
    let s = run(&none, None, &force);
    assert!(ids(&s).is_empty(), "{:?}", ids(&s));
    assert!(reason(&s, "vulkan-linux-x86_64").contains("needs a Vulkan GPU"));
}

/// Selection with nothing installed and `path_server` as `which` found it.
fn run_uninstalled(r: &HardwareReport, prefs: &Preferences, path_server: Option<&str>) -> Selection {
    let catalog = Catalog::bundled();
    let none = |_: &str| None;
    select(&Inputs {
        report: r,
        catalog: &catalog,
        installed: &none,
        model_format: None,
        prefs,
        path_server: path_server.map(PathBuf::from),
        cpu_family: None,
        calibrated: &[],
    })
}

#[test]
fn missing_files_forced_variants_remote_and_path_servers() {
    let r = report("linux", "x86_64", X86_AVX2);
    let on_path = Some("/usr/bin/llama-server");
    let s = run_uninstalled(&r, &Preferences::default(), on_path);
    assert_eq!(ids(&s), ["builtin"]);
    assert_eq!(reason(&s, "bitnet-cpu-linux-x86_64"), "fits, but cpu/linux/llama-server is not installed");
    assert!(reason(&s, "path").contains("not allowed"));

    let prefs =
        Preferences { remote_url: Some("http://127.0.0.1:8000/v1".into()), allow_path_server: true, force: None };
    let s = run_uninstalled(&r, &prefs, on_path);
    assert_eq!(ids(&s), ["remote", "path", "builtin"]);

    let prefs = Preferences { force: Some("builtin".into()), ..prefs };
    let s = run_uninstalled(&r, &prefs, None);
    assert_eq!(ids(&s), ["builtin"]);
    assert_eq!(reason(&s, "remote"), "the config forces `builtin`");
    assert_eq!(reason(&s, "path"), "no llama-server on PATH");
}

#[test]
fn a_format_nobody_loads_leaves_no_candidate_and_says_why() {
    let s = run(&report("linux", "x86_64", X86_AVX2), Some("tl2"), &Preferences::default());
    assert!(s.candidates.is_empty());
    assert_eq!(reason(&s, "builtin"), "cannot load tl2 models");
}

/// The catalog's speed figures decide the order of the CPU candidates on
/// each CPU family and format they cover: the one that answers the
/// reference turn sooner goes first, GPU builds keep their places above.
#[test]
fn cpu_candidates_follow_the_catalog_figures_for_their_cpu_family() {
    let catalog = Catalog::bundled();
    let installed = |f: &str| Some(PathBuf::from("/bin").join(f));
    let prefs = Preferences::default();
    let mut checked = 0;
    for m in &catalog.measured {
        let (arch, _) = m.family.split_once('-').unwrap();
        let Some(v) = catalog
            .variants
            .iter()
            .find(|v| v.id == m.candidate || (m.candidate == "builtin" && v.arch == arch && v.gpu == GpuApi::None))
        else {
            continue;
        };
        let mut features: Vec<&str> = v.cpu_features.iter().map(String::as_str).collect();
        features.extend(["avx", "avx2", "fma", "f16c"].iter().filter(|_| arch == "x86_64"));
        let r = report(&v.os, arch, &features);
        let sel = select(&Inputs {
            report: &r,
            catalog: &catalog,
            installed: &installed,
            model_format: Some(&m.format),
            prefs: &prefs,
            path_server: None,
            cpu_family: Some(&m.family),
            calibrated: &[],
        });
        let mut want: Vec<&bitnet_supervisor::Measured> = catalog
            .measured
            .iter()
            .filter(|x| {
                x.family == m.family && x.format == m.format && sel.candidates.iter().any(|c| c.id == x.candidate)
            })
            .collect();
        if want.len() < 2 {
            continue;
        }
        want.sort_by(|a, b| a.turn_secs().total_cmp(&b.turn_secs()));
        let cpu: Vec<&str> = sel.candidates.iter().filter(|c| c.gpu == GpuApi::None).map(|c| c.id.as_str()).collect();
        let want: Vec<&str> = want.iter().map(|x| x.candidate.as_str()).collect();
        assert_eq!(cpu[..want.len()], want[..], "{} {}: {}", m.family, m.format, sel.merit.why);
        assert_eq!(sel.merit.basis, bitnet_supervisor::Basis::Shipped);
        checked += 1;
    }
    assert!(checked >= 2, "the catalog ships figures for at least one family and format");
    // On this kind of CPU, I2_S: the engine's AVX-512 VNNI kernels beat
    // bitnet.cpp's AVX2 build (tests/benches/servers.rs).
    let r = report("linux", "x86_64", &[X86_AVX2, &["avx512f", "avx512bw", "avx512vnni"]].concat());
    let sel = select(&Inputs {
        report: &r,
        catalog: &catalog,
        installed: &installed,
        model_format: Some("i2_s"),
        prefs: &prefs,
        path_server: None,
        cpu_family: Some("x86_64-avx512vnni"),
        calibrated: &[],
    });
    assert_eq!(ids(&sel), ["builtin", "bitnet-cpu-linux-x86_64"], "{}", sel.merit.why);
}
