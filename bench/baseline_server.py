"""The server a user would write in 30 lines instead of Residency (the serving bench's baseline).

python bench/baseline_server.py PORT
"""

import sys

import numpy as np
import uvicorn
from fastapi import FastAPI, Response
from hibari import Hibari
from pydantic import BaseModel

app = FastAPI()
tts = Hibari("heart")


class Speech(BaseModel):
    input: str
    model: str = "hibari"
    voice: str = "heart"
    speed: float = 1.0
    response_format: str = "pcm"


@app.post("/v1/audio/speech")
def speech(req: Speech) -> Response:  # a plain def: FastAPI runs it on its thread pool
    audio = tts(req.input, speed=req.speed, seed=0)
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
    return Response(pcm, media_type="audio/pcm")


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
