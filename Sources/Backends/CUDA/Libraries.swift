import SwitchyardSupport

/// A CUDA library that could not be loaded, or a CUDA call that failed. One line, saying what.
public struct CUDAError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Finds and opens CUDA's shared libraries at run time: nothing CUDA is needed to build
/// Switchyard. Looks in `$SWITCHYARD_CUDA_PATH` (a folder, or several separated by ':'), then the
/// standard library paths, then the `lib` folders of Python's nvidia-* wheels.
public enum CUDALibraries {
    /// Folders to try, in order.
    public static var searchFolders: [String] {
        var folders: [String] = []
        if let env = getenv("SWITCHYARD_CUDA_PATH") {
            folders += String(cString: env).split(separator: ":").map(String.init)
        }
        let patterns = [
            "/usr/local/lib/python3*/site-packages/nvidia/*/lib", "/usr/local/lib/python3*/dist-packages/nvidia/*/lib",
            "/usr/lib/python3/dist-packages/nvidia/*/lib", "/root/.local/lib/python3*/site-packages/nvidia/*/lib",
            "/root/.pyenv/versions/*/lib/python3*/site-packages/nvidia/*/lib",
            "/opt/conda/lib/python3*/site-packages/nvidia/*/lib", "/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib",
        ]
        for pattern in patterns { folders += glob(pattern) }
        if let home = getenv("HOME") { folders += glob(String(cString: home) + "/.local/lib/python3*/site-packages/nvidia/*/lib") }
        return folders
    }

    /// Opens the first of `names` found in the search folders or the standard paths.
    /// - Parameter names: sonames, newest first (`libnvrtc.so.13`, `libnvrtc.so.12`...).
    public static func open(_ names: [String], what: String) throws(CUDAError) -> UnsafeMutableRawPointer {
        var tried: [String] = []
        for folder in searchFolders {
            for name in names {
                let path = folder + "/" + name
                guard access(path, R_OK) == 0 else { continue }
                if let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL) { return handle }
                tried.append("\(path): \(String(cString: dlerror()))")
            }
        }
        for name in names {
            if let handle = dlopen(name, RTLD_NOW | RTLD_LOCAL) { return handle }
        }
        let reason = tried.last ?? "\(names.joined(separator: ", ")) not in the library path, $SWITCHYARD_CUDA_PATH or Python's nvidia-* wheels"
        throw CUDAError("no \(what) found: \(reason)")
    }

    /// A function of a loaded library, typed by the caller.
    public static func symbol<T>(_ handle: UnsafeMutableRawPointer, _ name: String, as type: T.Type) throws(CUDAError) -> T {
        guard let pointer = dlsym(handle, name) else { throw CUDAError("\(name) missing from the CUDA library") }
        return unsafeBitCast(pointer, to: type)
    }

    static func glob(_ pattern: String) -> [String] {
        var result = glob_t()
        defer { globfree(&result) }
        guard Glibc.glob(pattern, 0, nil, &result) == 0 else { return [] }
        return (0..<Int(result.gl_pathc)).compactMap { result.gl_pathv[$0].map { String(cString: $0) } }
    }
}

/// NVIDIA's run-time compiler: turns the kernels' CUDA C into GPU code for the GPU present.
public final class NVRTC: @unchecked Sendable {
    typealias Program = OpaquePointer?
    private let create: @convention(c) (UnsafeMutablePointer<Program>, UnsafePointer<CChar>, UnsafePointer<CChar>, Int32, UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<UnsafePointer<CChar>?>?) -> Int32
    private let compileProgram: @convention(c) (Program, Int32, UnsafePointer<UnsafePointer<CChar>?>?) -> Int32
    private let logSize: @convention(c) (Program, UnsafeMutablePointer<Int>) -> Int32
    private let getLog: @convention(c) (Program, UnsafeMutablePointer<CChar>) -> Int32
    private let cubinSize: @convention(c) (Program, UnsafeMutablePointer<Int>) -> Int32
    private let getCubin: @convention(c) (Program, UnsafeMutablePointer<CChar>) -> Int32
    private let destroy: @convention(c) (UnsafeMutablePointer<Program>) -> Int32
    private let errorString: @convention(c) (Int32) -> UnsafePointer<CChar>?
    public let version: (major: Int, minor: Int)

    public init() throws(CUDAError) {
        let handle = try CUDALibraries.open(["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"], what: "NVRTC (the CUDA run-time compiler)")
        create = try CUDALibraries.symbol(handle, "nvrtcCreateProgram", as: type(of: create))
        compileProgram = try CUDALibraries.symbol(handle, "nvrtcCompileProgram", as: type(of: compileProgram))
        logSize = try CUDALibraries.symbol(handle, "nvrtcGetProgramLogSize", as: type(of: logSize))
        getLog = try CUDALibraries.symbol(handle, "nvrtcGetProgramLog", as: type(of: getLog))
        cubinSize = try CUDALibraries.symbol(handle, "nvrtcGetCUBINSize", as: type(of: cubinSize))
        getCubin = try CUDALibraries.symbol(handle, "nvrtcGetCUBIN", as: type(of: getCubin))
        destroy = try CUDALibraries.symbol(handle, "nvrtcDestroyProgram", as: type(of: destroy))
        errorString = try CUDALibraries.symbol(handle, "nvrtcGetErrorString", as: type(of: errorString))
        let versionFunction = try CUDALibraries.symbol(handle, "nvrtcVersion", as: (@convention(c) (UnsafeMutablePointer<Int32>, UnsafeMutablePointer<Int32>) -> Int32).self)
        var major: Int32 = 0, minor: Int32 = 0
        _ = versionFunction(&major, &minor)
        version = (Int(major), Int(minor))
    }

    /// Compiles `source` to a cubin for `architecture` (e.g. "sm_90").
    public func compile(_ source: String, name: String, architecture: String) throws(CUDAError) -> [UInt8] {
        var program: Program = nil
        var status = source.withCString { s in name.withCString { n in create(&program, s, n, 0, nil, nil) } }
        guard status == 0 else { throw CUDAError("NVRTC could not take \(name): \(message(status))") }
        defer { _ = destroy(&program) }
        let options = ["--gpu-architecture=\(architecture)", "--std=c++17", "-default-device"]
        let cOptions = options.map { strdup($0) }
        defer { cOptions.forEach { free($0) } }
        status = cOptions.map { UnsafePointer($0) }.withUnsafeBufferPointer { compileProgram(program, Int32(options.count), $0.baseAddress) }
        guard status == 0 else {
            var size = 0
            _ = logSize(program, &size)
            var log = [CChar](repeating: 0, count: max(size, 1))
            _ = getLog(program, &log)
            let text = String(decoding: log.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self).split(separator: "\n").prefix(3).joined(separator: " | ")
            throw CUDAError("NVRTC could not compile \(name) for \(architecture): \(text)")
        }
        var size = 0
        _ = cubinSize(program, &size)
        var cubin = [CChar](repeating: 0, count: size)
        _ = getCubin(program, &cubin)
        return cubin.map { UInt8(bitPattern: $0) }
    }

    private func message(_ status: Int32) -> String { errorString(status).map { String(cString: $0) } ?? "error \(status)" }
}

/// The CUDA driver: present only on a machine with an NVIDIA GPU and its driver.
public final class CUDADriver: @unchecked Sendable {
    public let deviceCount: Int

    public init() throws(CUDAError) {
        let handle = try CUDALibraries.open(["libcuda.so.1", "libcuda.so"], what: "CUDA driver")
        let initialize = try CUDALibraries.symbol(handle, "cuInit", as: (@convention(c) (UInt32) -> Int32).self)
        let count = try CUDALibraries.symbol(handle, "cuDeviceGetCount", as: (@convention(c) (UnsafeMutablePointer<Int32>) -> Int32).self)
        let status = initialize(0)
        guard status == 0 else { throw CUDAError("no CUDA driver found: cuInit failed with error \(status) (no GPU, or the driver is not loaded)") }
        var n: Int32 = 0
        _ = count(&n)
        guard n > 0 else { throw CUDAError("no CUDA driver found: the driver sees no GPU") }
        deviceCount = Int(n)
    }
}
