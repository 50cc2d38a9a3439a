import CUDA
import Runtime

/// The CUDA backend: where `CUDAAccelerator: Accelerator` (device memory as offsets into one
/// allocation, a copy stream and a kernel stream with events, cuBLASLt products and the NVRTC
/// kernels of the CUDA module, experts run with `runExpert`) will be written, against the same
/// conformance suite as the emulated accelerator (Tests/BackendConformanceTests). Until a GPU has
/// run it, the backend only says whether one is there: a model never runs on a GPU path that has
/// not been proven on one (the GPU issue).
public enum CUDABackend {
    /// Why models cannot run on CUDA here: no driver, no GPU, or (with a GPU) the execution path not
    /// written yet.
    public static func unavailableReason() -> String {
        do {
            let driver = try CUDADriver()
            return "the CUDA backend cannot run models yet (\(driver.deviceCount) GPU(s) found)"
        } catch {
            return error.description
        }
    }
}
