import onnxruntime as ort, numpy as np, sys
from PIL import Image, ImageOps
m='models/yolov8-effl0-fracatlas-int8.onnx'
def prep(p,S=320):
    im=ImageOps.exif_transpose(Image.open(p)).convert('RGB')
    w,h=im.size; s=min(S/w,S/h); nw,nh=round(w*s),round(h*s)
    im=im.resize((nw,nh),Image.BILINEAR)
    c=Image.new('RGB',(S,S),(114,114,114)); c.paste(im,((S-nw)//2,(S-nh)//2))
    x=np.asarray(c,np.float32)/255.; x=(x-[0.485,0.456,0.406])/[0.229,0.224,0.225]
    return x.transpose(2,0,1)[None].astype(np.float32)
def sess(level, P="0"):
    o=ort.SessionOptions(); o.graph_optimization_level=level; o.intra_op_num_threads=1; o.add_session_config_entry("session.x64quantprecision", P)
    return ort.InferenceSession(m,o,providers=['CPUExecutionProvider'])
a=sess(ort.GraphOptimizationLevel.ORT_DISABLE_ALL); b=sess(ort.GraphOptimizationLevel.ORT_ENABLE_ALL,"1")
for f in sys.argv[1:]:
    x=prep(f); ya=a.run(None,{'tensor_419':x})[0]; yb=b.run(None,{'tensor_419':x})[0]
    print(f.split('/')[-1], 'score max|d| %.4f'%np.abs(ya[0,4]-yb[0,4]).max(), 'max score', ya[0,4].max(), yb[0,4].max())
