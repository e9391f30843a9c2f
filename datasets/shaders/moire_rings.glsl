// Moire: two sets of concentric rings from nearby centres interfere into large beat fringes.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = (fragCoord - 0.5 * iResolution.xy) / iResolution.y;
    float freq = 40.0 + 120.0 * iParams[0].x;
    vec2 c1 = (iMouse.xy / iResolution.xy - 0.5) * 0.6;
    vec2 c2 = c1 + 0.05 * (0.3 + iParams[0].y) * vec2(cos(iTime), sin(iTime));
    float a = step(0.0, sin(freq * length(uv - c1)));
    float b = step(0.0, sin(freq * length(uv - c2)));
    float v = mix(a * b, abs(a - b), step(0.5, iParams[0].z));
    fragColor = vec4(mix(kd_palette(0.0) * 0.2, kd_palette(0.5 + iParams[0].w), v), 1.0);
}
