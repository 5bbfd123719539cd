import onnxruntime as ort, numpy as np, time, sys
for m, S in [('models/yolov8-effl0-fracatlas-int8.onnx', 320), ('models/yolov8-effl0-fracatlas.onnx', 320)]:
    for P in ["0", "1"]:
        o = ort.SessionOptions(); o.intra_op_num_threads = int(sys.argv[1]); o.add_session_config_entry("session.x64quantprecision", P)
        s = ort.InferenceSession(m, o, providers=['CPUExecutionProvider'])
        name = s.get_inputs()[0].name
        x = np.random.default_rng(0).standard_normal((1, 3, S, S)).astype(np.float32)
        for _ in range(3): s.run(None, {name: x})
        t = []
        for _ in range(30):
            t0 = time.perf_counter(); s.run(None, {name: x}); t.append(time.perf_counter() - t0)
        print(f"{m.split('/')[-1]} x64quantprecision={P} threads={sys.argv[1]}: p50 {1000*np.median(t):.2f} ms")
