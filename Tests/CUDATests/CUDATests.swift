import Testing
@testable import CUDA
import SwitchyardSupport
import SwitchyardTestSupport

/// NVRTC comes from the nvidia-cuda-nvrtc wheel; without it these tests say so and stop.
let compiler: NVRTC? = {
    do { return try NVRTC() } catch {
        print("NOTICE: CUDA kernel compilation not checked: \(error) (pip install nvidia-cuda-nvrtc)")
        return nil
    }
}()

@Suite("CUDA kernels and loader")
struct CUDATests {
    @Test("every kernel compiles through NVRTC", arguments: ["sm_80", "sm_90"])
    func kernelsCompile(architecture: String) throws {
        guard let compiler else { return }
        for (name, source) in KernelSources.all {
            let cubin = try compiler.compile(KernelSources.unit(source), name: name + ".cu", architecture: architecture)
            #expect(cubin.count > 512, "\(name) for \(architecture)")
            #expect(Array(cubin.prefix(4)) == [0x7F, 0x45, 0x4C, 0x46], "a cubin is an ELF file")
        }
    }

    @Test func compiledKernelsAreCached() throws {
        guard let compiler else { return }
        let folder = "/tmp/switchyard-cuda-cache-\(getpid())"
        let cache = KernelCache(compiler: compiler, folder: folder)
        let first = try cache.cubin("rms_norm", architecture: "sm_80")
        let files = try #require(opendir(folder))
        var names: [String] = []
        while let entry = readdir(files) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if name.hasSuffix(".cubin") { names.append(name) }
        }
        closedir(files)
        #expect(names.count == 1 && names[0].hasPrefix("rms_norm-sm_80-"))
        #expect(try cache.cubin("rms_norm", architecture: "sm_80") == first)
    }

    @Test func compileErrorsAreOneLine() throws {
        guard let compiler else { return }
        do {
            _ = try compiler.compile("extern \"C\" __global__ void k() { undefined_thing(); }", name: "bad.cu", architecture: "sm_80")
            Issue.record("expected an error")
        } catch {
            #expect(error.description.contains("bad.cu") && !error.description.contains("\n"))
        }
    }

    @Test func missingLibrariesGiveOneClearLine() {
        do {
            _ = try CUDALibraries.open(["libdefinitely-not-cuda.so.1"], what: "CUDA driver")
            Issue.record("expected an error")
        } catch {
            #expect(error.description.hasPrefix("no CUDA driver found: "))
        }
    }
}
